"""Stacks with known 3D objects: gap filling, and the prompt a mask gives the next plane.

Two measurements on a seeded synthetic (Z, Y, X) stack of bright ellipsoids whose true 3D
labels are known:

1. **Gap filling** (``--part gaps``). Segment everything on every plane, link, and count
   the fragments of each true object: the linked ids that lie mostly (over half their
   voxels) inside it. A detector that misses an object on one plane splits it in two;
   gap filling decodes it on that plane from its neighbours' boxes. The pipeline is the
   classical stand-in of the tests (``tests/napari/standin.py``: objects are the bright
   connected regions), whose detector here misses each box with probability
   ``--miss-rate`` (seeded), as a real detector misses some objects on some planes;
   its decoder finds an object from any box around it. The numbers measure the gap
   filling and linking code, not MobileSAMv2's models.

2. **Prompt choice** (``--part prompts``). Each true object is prompted with its box on
   its middle plane and followed through z with each ``next_prompt`` choice (box,
   box+point, box+mask); reported are the mean 3D IoU with the true object and the planes
   reached. This needs MobileSAMv2's real weights (``--encoder-weights``,
   ``--decoder-weights``, or the weights cache): the stand-in ignores points and masks
   given with a box, and random weights segment nothing real, so neither can compare the
   choices.

    python benchmarks/propagation.py --part gaps --json OUT.json
    python benchmarks/propagation.py --part prompts --encoder tiny_vit --encoder-weights mobile_sam.pt \\
        --decoder-weights Prompt_guided_Mask_Decoder.pt --json OUT.json

Prints a table and writes JSON with the numbers and the settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "napari"))


def synthetic_stack(shape=(16, 128, 128), n=10, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 stack of bright ellipsoids on a noisy background, and its true (Z, Y, X) labels.

    Ellipsoids have radii 4-7 planes in z and 8-14 px in y and x, with their caps cut where the
    section is 0.6 of the widest (a tip of a few pixels changes more from plane to plane than
    linking allows, which would blur what is measured); centres are drawn until no two objects
    are closer in y, x than their largest radii plus 4 px (they never touch).
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    truth = np.zeros(shape, np.int32)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    while len(placed) < n:
        radii = np.array([rng.uniform(4, 7), rng.uniform(8, 14), rng.uniform(8, 14)])
        centre = np.array([rng.uniform(3, shape[0] - 3), *(rng.uniform(r + 2, s - r - 2)
                                                            for r, s in zip(radii[1:], shape[1:]))])
        if any(np.linalg.norm((centre - c)[1:]) < (radii + r)[1:].max() + 4 for c, r in placed):
            continue
        placed.append((centre, radii))
        inside = sum(((axis - c) / r) ** 2 for axis, c, r in zip((zz, yy, xx), centre, radii)) <= 1
        inside &= np.abs(zz - centre[0]) <= 0.8 * radii[0]  # flat caps: no tip planes of a few pixels
        truth[inside] = len(placed)
    image = rng.normal(20, 4, shape) + 180 * (truth > 0)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def fragments(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per true object: the predicted ids with over half their voxels inside it."""
    ids, counts = np.unique(predicted[predicted > 0], return_counts=True)
    size = dict(zip(ids.tolist(), counts.tolist()))
    pairs, overlap = np.unique(np.stack([truth.ravel(), predicted.ravel()]), axis=1, return_counts=True)
    found = np.zeros(int(truth.max()), np.int64)
    for (t, p), count in zip(pairs.T, overlap):
        if t > 0 and p > 0 and count > size[int(p)] / 2:
            found[t - 1] += 1
    return found


def gap_filling(args) -> dict:
    from standin import BlobPipeline

    from napari_mobilesamv2 import EverythingOptions
    from napari_mobilesamv2.engine import segment_stack

    class MissingDetector(BlobPipeline):
        """The stand-in, whose detector misses each box with a fixed probability (seeded)."""

        def __init__(self, miss_rate: float, seed: int):
            super().__init__()
            self.miss_rate, self.rng = miss_rate, np.random.default_rng(seed)

        def detect(self, image_rgb, **kwargs):
            boxes, scores = super().detect(image_rgb, **kwargs)
            keep = self.rng.random(len(boxes)) >= self.miss_rate
            return boxes[keep], scores[keep]

    rows = []
    for seed in range(args.seeds):
        image, truth = synthetic_stack(seed=seed)
        for fill in (False, True):
            started = time.perf_counter()
            found = segment_stack(MissingDetector(args.miss_rate, seed), image, EverythingOptions(fill_gaps=fill))
            pieces = fragments(truth, found.link.labels)
            covered = np.count_nonzero((truth > 0) & (found.link.labels > 0)) / np.count_nonzero(truth)
            rows.append({"seed": seed, "fill_gaps": fill, "true_objects": int(truth.max()),
                         "fragments_per_object": float(pieces.mean()), "objects_split": int((pieces > 1).sum()),
                         "objects_missed": int((pieces == 0).sum()), "linked_ids": found.link.n_objects,
                         "true_voxels_labelled": round(float(covered), 4),
                         "seconds": round(time.perf_counter() - started, 2)})
    summary = {}
    for fill in (False, True):
        mine = [r for r in rows if r["fill_gaps"] == fill]
        summary["on" if fill else "off"] = {
            "fragments_per_object": round(float(np.mean([r["fragments_per_object"] for r in mine])), 3),
            "objects_split": int(sum(r["objects_split"] for r in mine)),
            "true_objects": int(sum(r["true_objects"] for r in mine)),
            "true_voxels_labelled": round(float(np.mean([r["true_voxels_labelled"] for r in mine])), 4),
        }
    print(f"gap filling, stand-in pipeline, detector miss rate {args.miss_rate}, {args.seeds} seeded stacks "
          f"(16 x 128 x 128, 10 objects each)")
    print(f"{'fill_gaps':>9}  {'fragments/object':>16}  {'objects split':>13}  {'true voxels labelled':>20}")
    for name, values in summary.items():
        print(f"{name:>9}  {values['fragments_per_object']:>16.3f}  "
              f"{values['objects_split']:>6} of {values['true_objects']:<4}  {values['true_voxels_labelled']:>20.4f}")
    return {"part": "gaps", "pipeline": "stand-in (tests/napari/standin.py)", "miss_rate": args.miss_rate,
            "runs": rows, "summary": summary}


def prompt_choice(args) -> dict:
    from napari_mobilesamv2 import MobileSAMv2
    from napari_mobilesamv2.decode.prompted import ObjectPrompt
    from napari_mobilesamv2.options import NEXT_PROMPTS, PropagationOptions
    from napari_mobilesamv2.propagate import propagate

    model = MobileSAMv2.from_pretrained(args.encoder, encoder_weights=args.encoder_weights,
                                        decoder_weights=args.decoder_weights, device=args.device,
                                        download=not args.no_download, load_detector=False)
    rows = []
    for seed in range(args.seeds):
        image, truth = synthetic_stack(seed=seed)
        objects = []
        for i in range(1, int(truth.max()) + 1):
            planes = np.flatnonzero((truth == i).any(axis=(1, 2)))
            middle = int(planes[len(planes) // 2])
            ys, xs = np.nonzero(truth[middle] == i)
            objects.append(((middle,), ObjectPrompt(box=np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1],
                                                                 np.float32))))
        for how in NEXT_PROMPTS:
            found = propagate(model, image, objects, PropagationOptions(next_prompt=how))
            for i in range(1, int(truth.max()) + 1):
                a, b = truth == i, found.labels == i
                rows.append({"seed": seed, "next_prompt": how, "object": i,
                             "iou_3d": float(np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)),
                             "planes_true": int(a.any(axis=(1, 2)).sum()),
                             "planes_reached": int(found.table["n_planes"][i - 1])})
    print(f"prompt choice, {args.encoder}, {args.seeds} seeded stacks")
    print(f"{'next_prompt':>11}  {'mean 3D IoU':>11}  {'planes reached / true':>21}")
    summary = {}
    for how in NEXT_PROMPTS:
        mine = [r for r in rows if r["next_prompt"] == how]
        summary[how] = {"iou_3d": round(float(np.mean([r["iou_3d"] for r in mine])), 4),
                        "planes_ratio": round(float(np.sum([r["planes_reached"] for r in mine])
                                                    / np.sum([r["planes_true"] for r in mine])), 4)}
        print(f"{how:>11}  {summary[how]['iou_3d']:>11.4f}  {summary[how]['planes_ratio']:>21.4f}")
    return {"part": "prompts", "encoder": args.encoder, "runs": rows, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("gaps", "prompts"), default="gaps")
    parser.add_argument("--seeds", type=int, default=5, help="synthetic stacks (seeds 0..N-1)")
    parser.add_argument("--miss-rate", type=float, default=0.15, help="gaps: share of boxes the detector misses")
    parser.add_argument("--encoder", default="efficientvit_l2")
    parser.add_argument("--encoder-weights", type=Path)
    parser.add_argument("--decoder-weights", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = gap_filling(args) if args.part == "gaps" else prompt_choice(args)
    result["machine"] = {"cpu": platform.machine(), "python": platform.python_version()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
