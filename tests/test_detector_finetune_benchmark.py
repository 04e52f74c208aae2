"""The detector fine-tuning benchmark runs end to end and writes its JSON (tiny settings)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "detector_finetune.py"


def test_finetune_benchmark_writes_the_documented_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("detector_finetune_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    image, labels = benchmark.synthetic_nuclei(3, size=128)
    assert image.dtype.name == "uint16" and labels.dtype.name == "uint16" and image.shape == (128, 128)
    assert labels.max() >= 4 and image[labels > 0].mean() > image[labels == 0].mean() + 300
    out = tmp_path / "finetune.json"
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--train-images", "4", "--test-images", "2", "--size", "128", "--imgsz", "128",
                        "--epochs", "1", "--batch", "2", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(out.read_text())
    assert summary["training"]["epochs_run"] == 1 and summary["train_set"]["val_images"] == 1
    assert len(summary["results"]) == 4
    assert all({"recall", "f1", "precision", "seconds_per_image"} <= set(row) for row in summary["results"].values())
    assert "| fine-tuned, conf 0.4 / IoU 0.9 |" in capsys.readouterr().out
