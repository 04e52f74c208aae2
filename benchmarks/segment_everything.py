"""Time and memory of each segment-everything stage, object-aware vs grid search vs the reference.

Full-size architectures with seeded random weights (no checkpoint needed): the
image encoder, a YOLOv8-seg-sized detector converted like ObjectAwareModel.pt
(nc=1, reg_max 26), SAM's prompt encoder and mask decoder. All decoder figures
include turning masks into a label image, on the same image embedding.

    python benchmarks/segment_everything.py --json bench.json [--grids 32,64] [--boxes 320] [--size 1024]

Prints a table and writes JSON with ``decoder_seconds`` (object_aware,
object_aware_exact, reference_predict_torch, grid_<n>), ``stage_seconds``, ``peak_rss_mb`` and ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil
import torch

from napari_mobilesamv2.decode.labels import assemble_labels
from napari_mobilesamv2.decode.masks import crop_to_content
from napari_mobilesamv2.decode.prompted import decode_boxes
from napari_mobilesamv2.embedding import PIXEL_MEAN, PIXEL_STD, embed_image
from napari_mobilesamv2.models import build_image_encoder, build_mask_decoder, build_prompt_encoder
from napari_mobilesamv2.prompts.grid import grid_everything


class PeakMemory:
    """Samples this process's RSS in a thread; ``peak_mb`` is the maximum seen."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def synchronize() -> None:
    """Wait for queued GPU work, so wall time covers it (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def measured(results: dict, name: str):
    """Record wall time (s), peak RSS (MB) and, on a GPU, peak GPU memory (MB) of the block under `name`."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as memory:
        synchronize()
        start = time.perf_counter()
        yield
        synchronize()
        results["seconds"][name] = time.perf_counter() - start
    results["peak_rss_mb"][name] = memory.peak_mb
    if torch.cuda.is_available():
        results.setdefault("peak_gpu_mb", {})[name] = torch.cuda.max_memory_allocated() / 2**20


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(30, 10, (size, size))
    for _ in range(150):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 100, size / 25)
        image += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    grey = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def random_boxes(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` boxes of varied size inside the image, like a detector's proposals."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.02, 0.4, (n, 2)) * size
    x0y0 = rng.uniform(0, 1, (n, 2)) * (size - wh)
    return np.concatenate([x0y0, x0y0 + wh], axis=1).astype(np.float32)


def build_detector(scale: str) -> torch.nn.Module:
    """A YOLOv8-`scale` network with the converted ObjectAwareModel head: Detect(nc=1, reg_max=26).

    The official Segment head also computes 32 mask coefficients per anchor (unused); that
    small branch is left out here, as it is in our converted model.
    """
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from napari_mobilesamv2.models.detector import ObjectAwareDetector

    config = yaml_model_load(f"yolov8{scale}-seg.yaml")
    config.update(nc=1, reg_max=26)
    sources = config["head"][-1][0]
    config["head"][-1] = [sources, 1, "Detect", ["nc"]]
    network = DetectionModel(config, nc=1, verbose=False)
    return ObjectAwareDetector(network.fuse(verbose=False).eval()).eval()


def reference_predict_torch(prompt_encoder, mask_decoder, image_encoder, embedding, boxes) -> np.ndarray:
    """segment-anything's reference path: all boxes in one ``predict_torch`` call, full-size masks."""
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    sam = Sam(image_encoder, prompt_encoder, mask_decoder, list(PIXEL_MEAN), list(PIXEL_STD)).eval()
    predictor = SamPredictor(sam)
    predictor.features, predictor.is_image_set = embedding.features, True
    predictor.original_size, predictor.input_size = embedding.original_size, embedding.input_size
    transformed = torch.from_numpy(predictor.transform.apply_boxes(boxes, embedding.original_size)).to(embedding.device)
    with torch.inference_mode():
        masks, _, _ = predictor.predict_torch(None, None, transformed, multimask_output=False)
    crops = [crop_to_content(m) for m in masks[:, 0].cpu().numpy()]
    return assemble_labels(crops, embedding.original_size)[0]


def stack_run(depth: int, size: int, boxes_per_plane: int, encoder_name: str) -> dict:
    """Segment a (depth, size, size) stack plane by plane, then link ids through it."""
    from napari_mobilesamv2 import MobileSAMv2
    from napari_mobilesamv2.stack import link_planes

    torch.manual_seed(1)
    pipeline = MobileSAMv2(build_image_encoder(encoder_name), build_prompt_encoder(), build_mask_decoder(),
                           device="cpu", encoder_name=encoder_name)
    stack = np.stack([synthetic_image(size, seed=z)[..., 0] for z in range(depth)])
    boxes = random_boxes(boxes_per_plane, size, seed=5)
    start = time.perf_counter()
    planes = np.stack([pipeline.segment_everything(plane, boxes_xyxy=boxes).labels for plane in stack])
    segmented = time.perf_counter()
    link_planes(planes)
    linked = time.perf_counter()
    return {"planes": depth, "segment_seconds_per_plane": (segmented - start) / depth,
            "link_seconds_per_plane": (linked - segmented) / depth}


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    results: dict = {"seconds": {}, "peak_rss_mb": {}}
    image = synthetic_image(args.size)
    boxes = random_boxes(args.boxes, args.size)
    encoder = build_image_encoder(args.encoder).to(device)
    prompt_encoder, mask_decoder = build_prompt_encoder().to(device), build_mask_decoder().to(device)

    with measured(results, "encoder"):
        embedding = embed_image(encoder, image)
    if not args.skip_detector:
        from napari_mobilesamv2.prompts.object_aware import detect_objects

        detector = build_detector(args.detector_scale).to(device)
        with measured(results, "detector"):
            detect_objects(detector, image, device=device)
    with measured(results, "object_aware"):
        decoded = decode_boxes(prompt_encoder, mask_decoder, embedding, boxes, batch_size=args.batch_size)
        start = time.perf_counter()
        labels, _ = assemble_labels(decoded.crops, embedding.original_size)
        results["seconds"]["label_assembly"] = time.perf_counter() - start
    all_labels = {"object_aware": labels}
    if not args.skip_exact:
        with measured(results, "object_aware_exact"):
            decoded = decode_boxes(prompt_encoder, mask_decoder, embedding, boxes, args.batch_size, exact=True)
            all_labels["object_aware_exact"], _ = assemble_labels(decoded.crops, embedding.original_size)
    if not args.skip_reference:
        with measured(results, "reference_predict_torch"):
            reference = reference_predict_torch(prompt_encoder, mask_decoder, encoder, embedding, boxes)
        results["label_pixels_differing_from_reference"] = {
            name: int(np.count_nonzero(found != reference)) for name, found in all_labels.items()}
    for grid in args.grids:
        with measured(results, f"grid_{grid}"):
            found = grid_everything(prompt_encoder, mask_decoder, embedding, image, points_per_side=grid)
            assemble_labels(found["crops"], embedding.original_size)
    for depth in args.stack_depths:
        results.setdefault("stack", []).append(
            stack_run(depth, args.stack_size, args.stack_boxes, args.stack_encoder))
    return results


def report(results: dict, args: argparse.Namespace) -> dict:
    seconds, memory = results["seconds"], results["peak_rss_mb"]
    names = ("object_aware", "object_aware_exact", "reference_predict_torch", *[f"grid_{g}" for g in args.grids])
    decoders = [k for k in names if k in seconds]
    summary = {
        "machine": machine_description(),
        "settings": {"encoder": args.encoder, "boxes": args.boxes, "size": args.size, "device": args.device,
                     "batch_size": args.batch_size, "detector": f"yolov8{args.detector_scale}-seg, nc=1, reg_max 26"},
        "stage_seconds": {k: seconds[k] for k in ("encoder", "detector", "label_assembly") if k in seconds},
        "decoder_seconds": {k: seconds[k] for k in decoders},
        "peak_rss_mb": memory,
        "peak_gpu_mb": results.get("peak_gpu_mb", {}),
        "speedup_vs_object_aware": {k: seconds[k] / seconds["object_aware"] for k in decoders if k != "object_aware"},
    }
    if "stack" in results:
        summary["stack"] = results["stack"]
    if "label_pixels_differing_from_reference" in results:
        summary["label_pixels_differing_from_reference"] = results["label_pixels_differing_from_reference"]
    print(f"machine: {summary['machine']}")
    print(f"{args.size}x{args.size} image, {args.encoder} encoder, {args.boxes} boxes, device {args.device}\n")
    gpu = summary["peak_gpu_mb"]
    print(f"| stage | seconds | peak RSS (MB) | peak GPU memory (MB) | time / object-aware |\n|---|---:|---:|---:|---:|")
    for name in [*summary["stage_seconds"], *decoders]:
        ratio = summary["speedup_vs_object_aware"].get(name)
        print(f"| {name} | {seconds[name]:.4f} | {memory.get(name, float('nan')):.0f} | "
              f"{f'{gpu[name]:.0f}' if name in gpu else '-'} | {f'{ratio:.1f}x' if ratio else '-'} |")
    for name, count in summary.get("label_pixels_differing_from_reference", {}).items():
        print(f"{name}: {count} of {args.size * args.size} label pixels differ from the reference's")
    for row in summary.get("stack", []):
        print(f"stack of {row['planes']} planes: {row['segment_seconds_per_plane']:.3f} s/plane segmenting, "
              f"{row['link_seconds_per_plane'] * 1000:.2f} ms/plane linking")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--grids", default="32,64", type=lambda s: [int(g) for g in s.split(",") if g],
                        help="grid sizes (points per side) to compare, e.g. 32,64; empty for none")
    parser.add_argument("--boxes", type=int, default=320)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--encoder", default="efficientvit_l2")
    parser.add_argument("--detector-scale", default="x", choices=list("nsmlx"))
    parser.add_argument("--batch-size", type=int, help="boxes per decoder batch (default: the pipeline's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, help="runs, the last one reported (default: 2 on CUDA, else 1)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-exact", action="store_true", help="do not time the bitwise-exact decoder")
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--stack-depths", default="", type=lambda s: [int(d) for d in s.split(",") if d],
                        help="also time whole-stack runs of these depths, e.g. 8,64")
    parser.add_argument("--stack-size", type=int, default=256)
    parser.add_argument("--stack-boxes", type=int, default=16)
    parser.add_argument("--stack-encoder", default="tiny_vit")
    args = parser.parse_args(argv)
    # the first pass on a GPU pays for kernel loading and autotuning: time the last of `repeat`
    repeat = args.repeat or (2 if torch.device(args.device).type == "cuda" else 1)
    for _ in range(repeat):
        results = run(args)
    summary = report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
