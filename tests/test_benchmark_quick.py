"""The benchmark's quick mode (the CI smoke check's core), run in-process with tiny step counts.

No speed threshold here: timings on a shared CI machine are too noisy for a test; `benchmarks/throughput.py
--quick` applies the loose bound (lstmlm >= 0.5x plain PyTorch) when run as a script.
"""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402


@pytest.mark.slow
def test_quick_mode_reports_positive_numbers(tmp_path):
    result = throughput.run_quick(warmup=1, steps=2, repeats=1, log=lambda line: None)

    assert result["mode"] == "quick"
    assert {"cpu", "cpu_flags", "torch", "keras", "torch_threads", "precision"} <= set(result["environment"])
    block = result["training"]["small"]
    assert block["tokens_per_step"] == 20 * 20
    assert set(block["variants"]) == {"lstmlm", "pytorch"}
    for row in block["variants"].values():
        for key in ("ms_per_step", "tokens_per_second", "ratio_to_pytorch", "loss_first_step", "loss_last_step"):
            assert row[key] > 0 and math.isfinite(row[key]), (key, row)
        assert row["timed_steps"] == 2
        # tokens/s is the step's tokens over its median time (ms_per_step is rounded to 0.1 ms)
        assert row["tokens_per_second"] == pytest.approx(400 / row["ms_per_step"] * 1000, rel=0.01)
    variants = block["variants"]
    assert variants["pytorch"]["ratio_to_pytorch"] == 1.0
    # the headline ratio is plain PyTorch's step time over lstmlm's (rounded to 3 decimals)
    assert result["ratio_lstmlm_to_pytorch"] == variants["lstmlm"]["ratio_to_pytorch"] == pytest.approx(
        variants["pytorch"]["ms_per_step"] / variants["lstmlm"]["ms_per_step"], abs=1e-3)

    json_path, md_path = throughput.write(result, tmp_path / "bench")
    written = json.loads(json_path.read_text())["training"]["small"]["variants"]
    assert written["lstmlm"]["tokens_per_second"] == variants["lstmlm"]["tokens_per_second"]
    assert "plain PyTorch" in md_path.read_text()


def test_zipf_batches_are_shifted_targets():
    batches = throughput.zipf_batches(2, batch=3, num_steps=5, vocabulary=50)
    x, y = batches[0]
    assert x.shape == y.shape == (3, 5)
    assert (x[:, 1:] == y[:, :-1]).all()
    assert x.min() >= 0 and x.max() < 50
