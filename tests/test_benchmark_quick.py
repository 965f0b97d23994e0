"""The throughput benchmark's quick mode (the CI smoke check's core), run in-process with tiny step counts.

No speed threshold here: timings on a shared CI machine are too noisy for a test; `benchmarks/throughput.py
--quick` applies the loose bound (lstmlm >= 0.5x plain PyTorch at the same precision) when run as a script.
What is checked: every variant really trained on the benchmark's batches, lstmlm through its public train_step,
and the reported figures are the ones its recorded step times give.
"""

import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402

from lstmlm import torch_backend  # noqa: E402

from lstmlm.precision import resolve_precision
from lstmlm.training import epoch as epoch_module  # noqa: E402
from lstmlm.machine import cpu_info  # noqa: E402


@pytest.mark.slow
def test_quick_mode_times_the_real_steps(tmp_path, monkeypatch):
    calls = []
    real_step = epoch_module.train_step

    def counting_step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", counting_step)
    result = throughput.run_quick(warmup=1, rounds=2, log=lambda line: None)

    assert result["mode"] == "quick"
    assert result["environment"]["cpu"] == cpu_info()
    block = result["training"]["small"]
    assert block["tokens_per_step"] == 20 * 20
    bfloat16 = cpu_info()["bfloat16"]
    assert set(block["variants"]) == ({"lstmlm", "pytorch", "pytorch-bf16"} if bfloat16 else {"lstmlm", "pytorch"})
    assert calls == [1] * 3  # lstmlm's steps (1 warm-up + 2 timed) went through epoch_module.train_step
    lstmlm = block["variants"]["lstmlm"]
    assert lstmlm["precision"] == resolve_precision("auto")
    reference = "pytorch-bf16" if lstmlm["precision"] == "bfloat16" else "pytorch"
    assert result["same_precision_reference"] == reference
    for kind, row in block["variants"].items():
        assert row["timed_steps"] == len(row["cpu_ms_steps"]) == len(row["wall_ms_steps"]) == 2
        # an untrained model on a 10,000-word vocabulary starts near ln(10,000) = 9.21 nats
        assert abs(row["loss_first_step"] - math.log(10000)) < 0.3, kind
        assert math.isfinite(row["loss_last_step"])
        assert row["cpu_ms"] == pytest.approx(statistics.median(row["cpu_ms_steps"]), abs=0.02)
        assert row["tokens_per_second_cpu"] == pytest.approx(400 / (row["cpu_ms"] / 1000), rel=1e-3)
        if f"speed_vs_{kind}_cpu" in row:  # a reference against itself
            assert row[f"speed_vs_{kind}_cpu"] == row[f"speed_vs_{kind}_wall"] == 1.0
    ratios = [b / a for a, b in zip(lstmlm["cpu_ms_steps"], block["variants"][reference]["cpu_ms_steps"])]
    assert result["ratio_lstmlm_to_same_precision"] == pytest.approx(statistics.median(ratios), rel=0.01)

    json_path, md_path = throughput.write(result, tmp_path / "bench")
    assert json.loads(json_path.read_text())["training"]["small"]["variants"]["lstmlm"]["cpu_ms"] == lstmlm["cpu_ms"]
    text = md_path.read_text()
    assert cpu_info()["model"] in text and "| pytorch | float32 |" in text


def test_zipf_batches_are_shifted_targets():
    batches = throughput.zipf_batches(2, batch=3, num_steps=5, vocabulary=50)
    x, y = batches[0]
    assert x.shape == y.shape == (3, 5)
    assert (x[:, 1:] == y[:, :-1]).all()
    assert x.min() >= 0 and x.max() < 50


def test_light_configs_match_the_presets():
    throughput.check_light_configs()  # raises if a preset changed and the plain-PyTorch copy did not
    assert set(throughput.LIGHT_CONFIGS) == {"tutorial", "small"}


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile needs a C++ compiler")
def test_the_compiled_reference_is_the_same_training_as_the_eager_one():
    """The opt-in `pytorch-compiled` variant (torch.compile of the forward pass and the loss) trains the same
    model on the same batches: its losses match the eager reference's step for step."""
    batches = throughput.zipf_batches(3, throughput.BATCH, throughput.LIGHT_CONFIGS["small"]["num_steps"])
    eager = throughput.make_step("pytorch", "small")
    compiled = throughput.make_step("pytorch-compiled", "small")
    assert (eager.name, compiled.name) == ("pytorch", "pytorch compiled")
    assert compiled.forward is not eager.forward  # the compiled wrapper, not the plain function
    for x, y in batches:
        assert compiled.step(x, y) == pytest.approx(eager.step(x, y), rel=1e-4)
