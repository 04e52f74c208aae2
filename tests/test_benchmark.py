"""The benchmark script runs end to end and writes the documented JSON keys (tiny settings)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "segment_everything.py"


def test_benchmark_writes_the_documented_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("segment_everything_benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "bench.json"
    benchmark.main(["--json", str(out), "--grids", "", "--boxes", "3", "--size", "96", "--encoder", "tiny_vit",
                    "--skip-detector"])
    summary = json.loads(out.read_text())
    assert set(summary["decoder_seconds"]) == {"object_aware", "object_aware_exact", "reference_predict_torch"}
    assert all(seconds > 0 for seconds in summary["decoder_seconds"].values())
    assert summary["label_pixels_differing_from_reference"]["object_aware_exact"] == 0  # 3 boxes: one batch
    assert summary["label_pixels_differing_from_reference"]["object_aware"] < 96 * 96 // 1000
    assert summary["machine"] and "object_aware" in summary["peak_rss_mb"]
    assert "| object_aware |" in capsys.readouterr().out


LARGE_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "large_images.py"


def test_large_image_benchmark_runs_the_cli_twice_and_writes_its_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("large_images_benchmark", LARGE_SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "large.json"
    benchmark.main(["--json", str(out), "--sizes", "300", "--tile", "256", "--overlap", "64",
                    "--grid-points", "2", "--workdir", str(tmp_path)])
    summary = json.loads(out.read_text())
    run, = summary["runs"]
    same_tiles = summary["strategies_on_tiles"]
    assert same_tiles["tiles"] == 4 and same_tiles["grid_points_per_side"] == 2
    assert all(same_tiles["seconds"][name] > 0 for name in ("embedding", "object-aware", "grid"))
    assert same_tiles["grid_over_object_aware"] == same_tiles["seconds"]["grid"] / same_tiles["seconds"]["object-aware"]
    assert run["size"] == 300 and run["tiles"] == 4  # 2 x 2 tiles of 256 px
    assert run["labels_equal"] and run["label_pixels_differing"] == 0  # cached embeddings: the same labels
    assert run["cold"]["objects"] == run["cached"]["objects"] and run["cold"]["objects"] >= 0
    for name in ("cold", "cached"):
        assert run[name]["seconds"] > 0 and run[name]["peak_rss_mb"] > 100  # torch alone takes more
        assert run[name]["seconds_per_megapixel"] == run[name]["seconds"] / 0.09
    assert len(summary["load_average_before"]) == 3 and summary["settings"]["encoder"] == "tiny_vit"
    printed = capsys.readouterr().out
    assert "| 300² | 4 |" in printed and "| grid 2² |" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["large.json"]  # images and outputs removed


def test_the_large_image_mosaic_is_uint16_with_bright_nuclei():
    spec = importlib.util.spec_from_file_location("large_images_benchmark", LARGE_SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    image = benchmark.synthetic_mosaic(512, seed=3)
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert np.median(image) < 500 and np.percentile(image, 99.5) > 1500  # dim background, bright nuclei
    np.testing.assert_array_equal(image, benchmark.synthetic_mosaic(512, seed=3))
