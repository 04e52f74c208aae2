"""The benchmark script runs end to end and writes the documented JSON keys (tiny settings)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
