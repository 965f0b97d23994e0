"""benchmarks/distributed.py's quick mode: the tiny model on 2,000 PTB words, in one process and in two (torchrun,
gloo), then the communication measurements.

No speed threshold: on a shared CI machine the timings say little; the test checks the numbers are there and
consistent (the same epoch in both layouts; the communication block describes the model that was timed).
"""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import distributed as benchmark  # noqa: E402  (benchmarks/distributed.py)

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_quick_mode_measures_both_layouts_and_the_all_reduce(tmp_path):
    assert benchmark.main(["--quick", "--out", str(tmp_path / "quick")]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert {"cpu", "cpu_flags", "cores", "uptime_at_start"} <= set(result["environment"])
    runs = result["presets"]["tiny"]["runs"]
    assert [(row["processes"], row["threads_per_process"]) for row in runs] == [(1, 1), (2, 1)]
    for row in runs:
        assert row["tokens_per_second"] > 0 and 1900 < row["train_tokens"] <= 2100
    assert runs[0]["train_tokens"] == runs[1]["train_tokens"]  # the same epoch, in one process or two
    comm = result["presets"]["tiny"]["communication"][0]
    assert comm["world_size"] == 2 and comm["backend"] == "gloo" and comm["rows_per_process"] == 4
    # the tiny shape with PTB's vocabulary: embedding 10,000 x 32, two LSTM layers of 32, softmax 32 x 10,000
    assert comm["parameters"] == 10000 * 32 + 2 * (32 * 128 * 2 + 128) + 32 * 10000 + 10000
    assert comm["gradient_bytes_per_step"] == 4 * comm["parameters"]
    for key in ("all_reduce_ms", "agreement_ms", "step_ms_with_all_reduce", "step_ms_without_communication"):
        assert comm[key] > 0 and math.isfinite(comm[key]), key
    assert "| tiny | 2 x 1 |" in (tmp_path / "quick.md").read_text()
