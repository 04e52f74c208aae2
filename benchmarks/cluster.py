"""Images per minute of segment everything on a local dask cluster of 1 and of 2 worker processes.

The script writes a folder of synthetic fluorescence-like images and real-format weights files
with seeded random weights (a TinyViT or EfficientViT-L2 encoder, SAM's decoder, and the tiny
ObjectAwareModel-format detector of the tests; nothing is downloaded), then, for 1 and for 2
workers (one task at a time each, ``--torch-threads`` torch threads each):

1. starts a local cluster of worker processes and builds the models on every worker
   (timed apart as ``start_s``);
2. segments the whole folder through :func:`napari_mobilesamv2.cluster.segment_files`, the
   workers writing the label images (timed as ``seconds``; images per minute from it).

The label images of both runs are compared (they must be identical).

    python benchmarks/cluster.py --json OUT.json [--images 6] [--size 384] [--encoder tiny_vit]

Prints a table and writes JSON with ``runs`` (workers, seconds, images per minute, start
seconds), ``ratio`` (2 workers over 1), ``identical``, ``settings``, ``machine`` and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY_DETECTOR = ROOT / "tests" / "fixtures" / "object_aware_tiny.pt"
ENCODER_FILES = {"tiny_vit": "mobile_sam.pt", "efficientvit_l2": "l2.pt"}


def synthetic_image(size: int, seed: int) -> np.ndarray:
    """A (size, size) uint16 image: bright soft nuclei on a dim noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(300.0, 40.0, (size, size))
    for _ in range(size * size // 1600):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5.0, 14.0)
        image += rng.uniform(1200.0, 6000.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_weights(folder: Path, encoder: str) -> tuple[Path, Path]:
    """Seeded random weights in the files' real formats."""
    import torch

    from napari_mobilesamv2.models import build_image_encoder, build_mask_decoder, build_prompt_encoder

    torch.manual_seed(0)
    encoder_path = folder / ENCODER_FILES[encoder]
    state = {f"image_encoder.{k}": v for k, v in build_image_encoder(encoder).state_dict().items()}
    # mobile_sam.pt is a bare state dict; EfficientViT-L2's l2.pt nests it under 'state_dict'
    torch.save(state if encoder == "tiny_vit" else {"state_dict": state}, encoder_path)
    decoder_path = folder / "Prompt_guided_Mask_Decoder.pt"
    torch.save({"PromtEncoder": build_prompt_encoder().state_dict(), "MaskDecoder": build_mask_decoder().state_dict()},
               decoder_path)
    return encoder_path, decoder_path


def run(workers: int, spec, images: list[Path], out: Path, options) -> dict:
    from napari_mobilesamv2 import cluster

    out.mkdir()
    outputs = [(out / f"{p.stem}_labels.tif", None) for p in images]
    start = time.perf_counter()
    with cluster.connect(workers=workers, threads_per_worker=1) as client:
        cluster.load_models(client, spec)
        ready = time.perf_counter()
        counts = cluster.segment_files(client, spec, images, outputs, options)
        seconds = time.perf_counter() - ready
    return {"workers": workers, "threads_per_worker": 1, "torch_threads": spec.torch_threads,
            "images": len(images), "objects": int(sum(counts)), "seconds": round(seconds, 2),
            "images_per_minute": round(60.0 * len(images) / seconds, 2), "start_s": round(ready - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--encoder", choices=tuple(ENCODER_FILES), default="tiny_vit")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()

    import tifffile

    from napari_mobilesamv2.cluster import ModelSpec
    from napari_mobilesamv2.options import EverythingOptions

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        images = []
        for i in range(args.images):
            images.append(tmp / "images" / f"cells{i:02d}.tif")
            tifffile.imwrite(images[-1], synthetic_image(args.size, seed=i))
        encoder_path, decoder_path = write_weights(tmp, args.encoder)
        spec = ModelSpec(args.encoder, encoder_weights=encoder_path, decoder_weights=decoder_path,
                         detector_weights=TINY_DETECTOR, device="cpu", trust_weights=True, download=False,
                         torch_threads=args.torch_threads)
        options = EverythingOptions()
        runs = [run(workers, spec, images, tmp / f"out{workers}", options) for workers in (1, 2)]
        identical = all(np.array_equal(tifffile.imread(tmp / "out1" / f"{p.stem}_labels.tif"),
                                       tifffile.imread(tmp / "out2" / f"{p.stem}_labels.tif")) for p in images)
    ratio = runs[1]["images_per_minute"] / runs[0]["images_per_minute"]
    result = {
        "runs": runs, "ratio": round(ratio, 2), "identical": identical,
        "settings": {"images": args.images, "size": args.size, "encoder": args.encoder, "detector": "tiny test fixture",
                     "torch_threads": args.torch_threads, "options": "defaults (imgsz 1024, max_prompts 320)"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"{'workers':>7}  {'images':>6}  {'seconds':>8}  {'images/min':>10}  {'start s':>7}")
    for r in runs:
        print(f"{r['workers']:>7}  {r['images']:>6}  {r['seconds']:>8.1f}  {r['images_per_minute']:>10.2f}  "
              f"{r['start_s']:>7.1f}")
    print(f"ratio (2 workers / 1 worker): {ratio:.2f}; identical labels: {identical}; load average before "
          f"{result['load_before'][0]:.1f}, after {result['load_after'][0]:.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
