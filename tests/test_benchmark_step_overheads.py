"""The step-overheads benchmark times pairs that compute the same thing the old way and lstmlm's way."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import step_overheads  # noqa: E402


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_each_pair_computes_the_same_result(precision, monkeypatch):
    """The capability check is forced to True: torch computes bfloat16 on any CPU (only slower without
    avx512_bf16 / AMX), so the bfloat16 pairs are checked on every machine."""
    from lstmlm import torch_backend

    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: True)
    for name, (before, after) in step_overheads.pieces(precision).items():
        old, new = before(), after()
        if name == "dropout":  # different masks, the same expectation: the sum of 20*30*500 kept-and-scaled values
            assert math.isfinite(old) and math.isfinite(new)
        else:
            assert new == pytest.approx(old, rel=1e-5), name


def test_quick_measurement_reports_every_piece():
    result = step_overheads.measure(1, "float32", log=lambda line: None)
    assert set(result) == {"transposes", "loss", "dropout", "layer calls"}
    assert all(row["before"] > 0 and row["after"] > 0 for row in result.values())
