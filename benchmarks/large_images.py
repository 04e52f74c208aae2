"""Time and peak memory of segment everything on large images, tile by tile, through the CLI.

For each image size the script writes a synthetic fluorescence-like mosaic (uint16, many small
nuclei, a tiled TIFF so windows can be read without loading the image) and runs

    napari-mobilesamv2 segment-everything IMG --tile 1024 --overlap 128 --labels OUT.zarr
        --proposals OUT.json --embeddings DIR

twice, each time in a fresh Python process: the first run computes and stores every tile's
embedding, the second reads them back from the cache. Peak RSS is that process's own
(``os.wait4``), so each run is measured alone. The models are real-format weight files with
seeded random weights written by this script (no download): a TinyViT or EfficientViT-L2
encoder, SAM's decoder, and the tiny ObjectAwareModel-format detector from the tests (or a
YOLOv8x-seg-sized one with ``--detector full``).

    python benchmarks/large_images.py --json OUT.json [--sizes 2048,4096,8192] [--encoder tiny_vit]

Prints a table and writes JSON with ``runs`` (one entry per size: seconds, seconds per
megapixel, peak RSS, objects, tiles for the cold and cached runs, and whether both runs wrote
the same labels), ``strategies_on_tiles`` (object-aware against a grid search on the same
tiles of the smallest mosaic, each tile embedded once), ``settings``, ``machine`` and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY_DETECTOR = ROOT / "tests" / "fixtures" / "object_aware_tiny.pt"
ENCODER_FILES = {"tiny_vit": "mobile_sam.pt", "efficientvit_l2": "l2.pt"}


def synthetic_mosaic(size: int, seed: int = 0, spacing: float = 40.0) -> np.ndarray:
    """A (size, size) uint16 fluorescence-like image: about one nucleus per `spacing`² pixels.

    Nuclei are bright ellipses with soft edges (radii 5–14 px) on a dim, noisy, slowly
    varying background, drawn one by one inside their own windows so memory stays at the
    image's size.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(300.0, 40.0, (size, size)).astype(np.float32)
    coarse = rng.normal(0.0, 60.0, (size // 256 + 2, size // 256 + 2)).astype(np.float32)
    image += np.kron(coarse, np.ones((256, 256), np.float32))[:size, :size]  # uneven illumination
    count = int(size * size / spacing**2)
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(5.0, 14.0, (count, 2))
    angles = rng.uniform(0, np.pi, count)
    brightness = rng.uniform(1200.0, 6000.0, count)
    for (cy, cx), (ry, rx), angle, peak in zip(centres, radii, angles, brightness):
        reach = int(np.ceil(max(ry, rx) + 3))
        y0, y1 = max(0, int(cy) - reach), min(size, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(size, int(cx) + reach + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
        v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
        distance = np.sqrt(u * u + v * v)
        image[y0:y1, x0:x1] += peak / (1.0 + np.exp((distance - 1.0) * 6.0))
    return np.clip(image, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def write_mosaic(path: Path, size: int, seed: int = 0) -> int:
    """Write the mosaic as a tiled (256 x 256), zlib-compressed TIFF; returns its number of nuclei drawn."""
    import tifffile

    image = synthetic_mosaic(size, seed)
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib", bigtiff=image.nbytes > 2**31)
    return int(size * size / 40.0**2)


def write_weights(folder: Path, encoder: str, detector: str, seed: int = 0) -> dict[str, Path]:
    """Real-format weight files with seeded random weights: encoder, decoder and detector."""
    import torch

    from napari_mobilesamv2.models import build_image_encoder, build_mask_decoder, build_prompt_encoder

    torch.manual_seed(seed)
    encoder_state = {f"image_encoder.{k}": v for k, v in build_image_encoder(encoder).state_dict().items()}
    encoder_path = folder / ENCODER_FILES[encoder]
    # mobile_sam.pt is a bare state dict; EfficientViT-L2's l2.pt nests it under 'state_dict'
    torch.save(encoder_state if encoder == "tiny_vit" else {"state_dict": encoder_state}, encoder_path)
    torch.manual_seed(seed + 1)
    prompt_encoder = build_prompt_encoder()
    torch.manual_seed(seed + 2)
    mask_decoder = build_mask_decoder()
    decoder_path = folder / "Prompt_guided_Mask_Decoder.pt"
    torch.save({"PromtEncoder": prompt_encoder.state_dict(), "MaskDecoder": mask_decoder.state_dict()}, decoder_path)
    detector_path = TINY_DETECTOR if detector == "tiny" else write_full_detector(folder / "ObjectAwareModel.pt", seed)
    return {"encoder": encoder_path, "decoder": decoder_path, "detector": detector_path}


def write_full_detector(path: Path, seed: int = 0) -> Path:
    """A YOLOv8x-seg-sized one-class detector with MobileSAMv2's head (26 DFL bins), pickled fp16 like the original.

    The head is a ``Detect`` (the official ``Segment`` head's mask-coefficient branch is never
    used and is dropped by the loader). It is pickled with the current Ultralytics, so it
    loads only with ``--trust-weights``.
    """
    import torch
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    torch.manual_seed(seed)
    config = yaml_model_load("yolov8x-seg.yaml")
    config.update(nc=1, reg_max=26)
    config["head"][-1] = [config["head"][-1][0], 1, "Detect", ["nc"]]
    network = DetectionModel(config, nc=1, verbose=False).eval()
    torch.save({"model": network.half()}, path)
    return path


def segment_command(image: Path, out: Path, weights: dict[str, Path], args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "napari_mobilesamv2.cli", "segment-everything", str(image),
        "--encoder", args.encoder, "--encoder-weights", str(weights["encoder"]),
        "--decoder-weights", str(weights["decoder"]), "--detector-weights", str(weights["detector"]),
        "--trust-weights", "--no-download", "--device", args.device,
        "--tile", str(args.tile), "--overlap", str(args.overlap),
        "--labels", str(out / "labels.zarr"), "--proposals", str(out / "proposals.json"),
        "--embeddings", str(args.cache),
    ]


def run_measured(command: list[str]) -> dict:
    """Run `command` in a new process; its wall time, own peak RSS (os.wait4) and stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))})
    stdout, stderr = _read_all(process)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {process.returncode}:\n{stderr[-3000:]}")
    found = re.search(r": (\d+) objects", stdout)
    # ru_maxrss is in kilobytes on Linux, bytes on macOS
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20, "objects": int(found.group(1)) if found else None}


def _read_all(process: subprocess.Popen) -> tuple[str, str]:
    """Both pipes to the end without reaping the process (so os.wait4 still gets its usage)."""
    import threading

    chunks = {"err": []}
    reader = threading.Thread(target=lambda: chunks["err"].append(process.stderr.read()), daemon=True)
    reader.start()
    stdout = process.stdout.read()
    reader.join()
    return stdout, "".join(chunks["err"])


def same_labels(first: Path, second: Path) -> tuple[bool, int]:
    """Whether two label zarr arrays are equal, and how many pixels differ (read in row bands)."""
    import zarr

    a, b = zarr.open_array(str(first), mode="r"), zarr.open_array(str(second), mode="r")
    if a.shape != b.shape:
        return False, -1
    differing = 0
    for y0 in range(0, a.shape[0], 1024):
        differing += int(np.count_nonzero(a[y0:y0 + 1024] != b[y0:y0 + 1024]))
    return differing == 0, differing


def measure_size(size: int, weights: dict[str, Path], folder: Path, args: argparse.Namespace) -> dict:
    from napari_mobilesamv2.tiling import tile_grid

    image = folder / f"mosaic_{size}.tif"
    start = time.perf_counter()
    nuclei = write_mosaic(image, size, seed=size)
    written = time.perf_counter() - start
    args.cache = folder / f"embeddings_{size}"
    runs = {}
    for name in ("cold", "cached"):
        out = folder / f"{name}_{size}"
        out.mkdir()
        result = run_measured(segment_command(image, out, weights, args))
        result["seconds_per_megapixel"] = result["seconds"] / (size * size / 1e6)
        runs[name] = result
        print(f"  {size}² {name}: {result['seconds']:.1f} s, {result['peak_rss_mb']:.0f} MB, "
              f"{result['objects']} objects", flush=True)
    equal, differing = same_labels(folder / f"cold_{size}" / "labels.zarr", folder / f"cached_{size}" / "labels.zarr")
    return {
        "size": size, "megapixels": size * size / 1e6, "tiles": len(tile_grid((size, size), args.tile, args.overlap)),
        "nuclei_drawn": nuclei, "mosaic_write_seconds": written, "tiff_bytes": image.stat().st_size,
        "cold": runs["cold"], "cached": runs["cached"],
        "cached_time_fraction": runs["cached"]["seconds"] / runs["cold"]["seconds"],
        "labels_equal": equal, "label_pixels_differing": differing,
    }


def strategies_on_tiles(size: int, weights: dict[str, Path], folder: Path, args: argparse.Namespace) -> dict:
    """Object-aware against grid search on the same tiles of one mosaic, in this process.

    Each tile is embedded once; both strategies then decode on that embedding, so the
    figures compare prompting and decoding alone (embedding time is reported apart).
    """
    import tifffile
    import torch

    from napari_mobilesamv2 import EverythingOptions, MobileSAMv2, to_rgb_uint8
    from napari_mobilesamv2.tiling import tile_grid

    pipeline = MobileSAMv2.from_pretrained(
        args.encoder, encoder_weights=weights["encoder"], decoder_weights=weights["decoder"],
        detector_weights=weights["detector"], device=args.device, trust_weights=True, download=False)
    image = tifffile.imread(folder / f"mosaic_{size}.tif")
    tiles = tile_grid(image.shape, args.tile, args.overlap)
    options = {"object-aware": EverythingOptions(),
               "grid": EverythingOptions(strategy="grid", points_per_side=args.grid_points)}
    seconds = {"embedding": 0.0, **{name: 0.0 for name in options}}
    objects = {name: 0 for name in options}
    synchronize = torch.cuda.synchronize if torch.device(pipeline.device).type == "cuda" else (lambda: None)
    for tile in tiles:
        rgb = to_rgb_uint8(image[tile.y0:tile.y1, tile.x0:tile.x1])
        synchronize()
        start = time.perf_counter()
        embedding = pipeline.embed(rgb)
        synchronize()
        seconds["embedding"] += time.perf_counter() - start
        for name, chosen in options.items():
            start = time.perf_counter()
            found = pipeline.segment_everything(rgb, chosen, embedding=embedding)
            synchronize()
            seconds[name] += time.perf_counter() - start
            objects[name] += int(found.labels.max())
    return {"size": size, "tiles": len(tiles), "grid_points_per_side": args.grid_points, "seconds": seconds,
            "objects_before_cross_tile_merge": objects, "grid_over_object_aware": seconds["grid"] / seconds["object-aware"]}


def machine_description() -> dict:
    import psutil
    import torch

    return {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
    }


def report(summary: dict) -> None:
    settings = summary["settings"]
    print(f"\nmachine: {summary['machine']}")
    print(f"load average (1, 5, 15 min) before: {summary['load_average_before']}, "
          f"after: {summary['load_average_after']}")
    print(f"encoder {settings['encoder']}, detector {settings['detector']}, tile {settings['tile']}, "
          f"overlap {settings['overlap']}, device {settings['device']}\n")
    print("| size | tiles | objects | seconds | s / megapixel | peak RSS (MB) | cached run (s) | cached / cold "
          "| cached peak RSS (MB) | same labels |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in summary["runs"]:
        cold, cached = row["cold"], row["cached"]
        same = "yes" if row["labels_equal"] else f"no ({row['label_pixels_differing']} px differ)"
        print(f"| {row['size']}² | {row['tiles']} | {cold['objects']} | {cold['seconds']:.1f} | "
              f"{cold['seconds_per_megapixel']:.2f} | {cold['peak_rss_mb']:.0f} | {cached['seconds']:.1f} | "
              f"{row['cached_time_fraction']:.2f} | {cached['peak_rss_mb']:.0f} | "
              f"{same} |")
    same_tiles = summary.get("strategies_on_tiles")
    if same_tiles:
        seconds = same_tiles["seconds"]
        print(f"\nsame {same_tiles['tiles']} tiles of the {same_tiles['size']}² mosaic, one embedding per tile "
              f"({seconds['embedding']:.1f} s in all):")
        print("| strategy | seconds (prompting + decoding, all tiles) | objects (before cross-tile merge) |")
        print("|---|---:|---:|")
        for name in ("object-aware", "grid"):
            print(f"| {name}{' ' + str(same_tiles['grid_points_per_side']) + '²' if name == 'grid' else ''} | "
                  f"{seconds[name]:.1f} | {same_tiles['objects_before_cross_tile_merge'][name]} |")
        print(f"grid / object-aware: {same_tiles['grid_over_object_aware']:.1f}x")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sizes", default="2048,4096,8192", type=lambda s: [int(v) for v in s.split(",") if v],
                        help="image sides in pixels, comma-separated")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--encoder", default="tiny_vit", choices=sorted(ENCODER_FILES))
    parser.add_argument("--detector", default="tiny", choices=("tiny", "full"),
                        help="tiny: the tests' ObjectAwareModel-format fixture; full: YOLOv8x-seg-sized")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid-points", type=int, default=32,
                        help="points per side of the grid search compared on the same tiles (0: skip)")
    parser.add_argument("--workdir", type=Path, help="keep images and outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    summary = {
        "machine": machine_description(), "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "settings": {"encoder": args.encoder, "tile": args.tile, "overlap": args.overlap, "device": args.device,
                     "detector": ("tests/fixtures/object_aware_tiny.pt (tiny YOLOv8-seg, random weights)"
                                  if args.detector == "tiny" else "YOLOv8x-seg-sized, nc=1, reg_max 26, random weights"),
                     "decoder": "SAM prompt encoder + mask decoder, random weights",
                     "command": "segment-everything --tile --overlap --labels OUT.zarr --proposals OUT.json "
                                "--embeddings DIR, one fresh process per run"},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="large-images-", dir=args.workdir) as folder:
        folder = Path(folder)
        weights = write_weights(folder, args.encoder, args.detector)
        for size in args.sizes:
            summary["runs"].append(measure_size(size, weights, folder, args))
        if args.grid_points and args.sizes:
            summary["strategies_on_tiles"] = strategies_on_tiles(min(args.sizes), weights, folder, args)
    summary["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
