"""Fine-tune a random-weight detector on synthetic nuclei and measure box recall and F1 before and after.

The data imitate a fluorescence nuclei stain: uint16 images with a smooth uneven background,
blurred bright ellipses of varied size, brightness and orientation, Poisson and read noise; the
label images mark each nucleus with its own id. A training set and a separate test set are
drawn from different seeds.

The starting detector is ``tests/fixtures/object_aware_tiny.pt``: the ObjectAwareModel.pt format
(Ultralytics 8.0.120 pickle, one class, 26-bin DFL head) with seeded random weights. It is
fine-tuned on the CPU with :func:`napari_mobilesamv2.training.train_detector`; then both detectors
are scored on the test set (box IoU >= 0.5) at MobileSAMv2's thresholds (conf 0.4, IoU 0.9) and at
the thresholds tuned on the validation images.

Run from the repository root::

    python benchmarks/detector_finetune.py --json benchmarks/results/detector_finetune.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.draw import ellipse

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "tests" / "fixtures" / "object_aware_tiny.pt"


def synthetic_nuclei(seed: int, size: int = 256, n_objects: tuple[int, int] = (6, 16)) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size) uint16 nuclei image and its uint16 label image (ids 1..N, 0 background).

    Nuclei are ellipses with semi-axes of 5 to 24 px that do not overlap (at least 2 px apart).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    occupied = np.zeros((size, size), bool)
    target = int(rng.integers(n_objects[0], n_objects[1] + 1))
    placed = 0
    for _ in range(target * 20):
        if placed == target:
            break
        radius_y, radius_x = rng.uniform(5, 24), rng.uniform(5, 24)
        centre = rng.uniform(0, size, size=2)
        rows, cols = ellipse(centre[0], centre[1], radius_y, radius_x, shape=(size, size),
                             rotation=rng.uniform(0, np.pi))
        if len(rows) < 30 or occupied[rows, cols].any():
            continue
        placed += 1
        labels[rows, cols] = placed
        occupied |= ndimage.binary_dilation(labels == placed, iterations=2)
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = 2 * np.pi * (yy * rng.uniform(0.3, 1) + xx * rng.uniform(0.3, 1)) + rng.uniform(0, 6)
    background = 300 + 150 * np.sin(phase)
    signal = np.zeros((size, size))
    for object_id in range(1, placed + 1):
        mask = labels == object_id
        texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 2)[mask]
        signal[mask] = rng.uniform(800, 3000) * (1 + 0.15 * texture)
    signal = ndimage.gaussian_filter(signal, 1.2)  # optical blur: soft edges
    expected = background + signal
    image = rng.poisson(expected) + rng.normal(0, 40, expected.shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def write_set(folder: Path, seeds: range, size: int) -> tuple[Path, Path, int]:
    """Write uint16 TIFF images and label TIFFs of the same names; returns the folders and object count."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    n_objects = 0
    for seed in seeds:
        image, label = synthetic_nuclei(seed, size)
        tifffile.imwrite(images / f"nuclei_{seed:04d}.tif", image)
        tifffile.imwrite(labels / f"nuclei_{seed:04d}.tif", label)
        n_objects += int(label.max())
    return images, labels, n_objects


def test_pairs(images: Path, labels: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb uint8, boxes) of a folder pair, mapped to 8 bit as for segmentation."""
    from napari_mobilesamv2.imaging import to_rgb_uint8
    from napari_mobilesamv2.training import boxes_from_labels

    return [(to_rgb_uint8(tifffile.imread(path)), boxes_from_labels(tifffile.imread(labels / path.name)))
            for path in sorted(images.glob("*.tif"))]


def score(detector, pairs, imgsz: int, conf: float, iou: float) -> dict:
    from napari_mobilesamv2.training import evaluate_detector

    result = evaluate_detector(detector, pairs, conf=conf, iou=iou, imgsz=imgsz)
    return {"conf": conf, "iou": iou, **result.as_dict()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--test-images", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--imgsz", type=int, default=256, help="network input size for training and detection")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, one per core)")
    parser.add_argument("--start", type=Path, default=START, help="starting detector (ObjectAwareModel.pt format)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_mobilesamv2.models.detector import load_object_aware_model
    from napari_mobilesamv2.training import load_detector_state, train_detector

    with tempfile.TemporaryDirectory(prefix="detector-finetune-") as folder:
        folder = Path(folder)
        train_images, train_labels, n_train_objects = write_set(folder / "train", range(args.train_images), args.size)
        test_images, test_labels, n_test_objects = write_set(
            folder / "test", range(10_000, 10_000 + args.test_images), args.size)
        pairs = test_pairs(test_images, test_labels)

        def on_epoch(epoch: int, metrics: dict) -> None:
            print(f"epoch {epoch:3d}/{metrics['epochs']}: box loss {metrics.get('box_loss', float('nan')):.3f}, "
                  f"val recall {metrics['recall']:.3f}, mAP50 {metrics['map50']:.3f} ({metrics['seconds']:.0f} s)",
                  flush=True)

        cpu_start, wall_start = time.process_time(), time.perf_counter()
        report = train_detector(train_images, train_labels, folder / "finetuned.pt", start=args.start,
                                trust_weights=True, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                                device="cpu", seed=0, on_epoch=on_epoch)
        cpu_seconds, wall_seconds = time.process_time() - cpu_start, time.perf_counter() - wall_start

        start_detector = load_object_aware_model(args.start)
        finetuned = load_detector_state(report.path)
        tuned = report.thresholds
        rows = {
            "start, conf 0.4 / IoU 0.9": score(start_detector, pairs, args.imgsz, 0.4, 0.9),
            (f"start, conf {report.before_tuned.conf:g} / IoU {report.before_tuned.iou:g} (tuned)"):
                score(start_detector, pairs, args.imgsz, report.before_tuned.conf, report.before_tuned.iou),
            "fine-tuned, conf 0.4 / IoU 0.9": score(finetuned, pairs, args.imgsz, 0.4, 0.9),
            f"fine-tuned, conf {tuned.conf:g} / IoU {tuned.iou:g} (tuned)":
                score(finetuned, pairs, args.imgsz, tuned.conf, tuned.iou),
        }
        summary = {
            "test_set": {"images": args.test_images, "objects": n_test_objects, "size": args.size},
            "train_set": {"images": args.train_images, "objects": n_train_objects,
                          "train_images": report.card["data"]["n_train_images"],
                          "val_images": report.card["data"]["n_val_images"]},
            "training": {"epochs": args.epochs, "epochs_run": report.epochs_run, "best_epoch": report.best_epoch,
                         "imgsz": args.imgsz, "batch": args.batch, "threads": args.threads,
                         "cpu_seconds": round(cpu_seconds, 1), "wall_seconds": round(wall_seconds, 1),
                         "train_seconds": report.card["training"]["seconds"]},
            "results": rows,
            "detector_file_bytes": report.path.stat().st_size,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "software": report.card["software"],
        }
    print_table(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def print_table(summary: dict) -> None:
    training = summary["training"]
    print(f"\nTest set: {summary['test_set']['images']} images, {summary['test_set']['objects']} nuclei; "
          f"trained {training['epochs_run']} epochs (best {training['best_epoch']}) at imgsz {training['imgsz']} "
          f"in {training['wall_seconds']:.0f} s wall, {training['cpu_seconds']:.0f} s CPU")
    print("| detector, thresholds | box recall (IoU 0.5) | precision | F1 | boxes | s/image |")
    print("|---|---|---|---|---|---|")
    for name, row in summary["results"].items():
        print(f"| {name} | {row['recall']:.3f} | {row['precision']:.3f} | {row['f1']:.3f} | {row['n_predicted']} | "
              f"{row['seconds_per_image']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
