"""benchmarks/tutorial_accuracy.py's quick mode: a tiny windowed run trained here, its epoch-2 checkpoint measured
the tutorial's way (windows from a zero state, lstmlm's step model) and checked against the Keras model run
window by window; the exact figures are those of `lstmlm evaluate`."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import tutorial_accuracy  # noqa: E402


@pytest.mark.slow
def test_quick_mode_matches_the_keras_model_window_by_window():
    lines = []
    result, ok = tutorial_accuracy.quick(log=lines.append)

    assert ok, lines
    [row] = result["rows"]
    assert (row["epoch"], row["split"], row["precision"]) == (2, "valid", "float32")
    window, exact = row["window"], row["exact"]
    assert window["tokens"] == window["windows"] * 6 and window["windows"] % 4 == 0  # whole batches of 4 x 6
    assert exact["tokens"] > window["tokens"]  # exact: every token after a leading <eos>; windows: whole batches
    assert 0 < window["accuracy"] < 1 and 0 < exact["accuracy"] < 1
    assert 1 < window["perplexity"] < 14 and 1 < exact["perplexity"] < 14  # trained: below uniform (13 words)
    assert row["history"]["accuracy"] == pytest.approx(exact["accuracy"], abs=1e-4)  # training's own validation
    assert math.isfinite(row["seconds"])
    table = tutorial_accuracy.markdown(result)
    assert "| 2 | valid | float32 |" in table and f"{window['accuracy']:.4f}" in table
