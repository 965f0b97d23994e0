"""The evaluation benchmark's quick mode: a synthetic corpus and a tiny model, saved and evaluated again.

Compared with itself (the same source tree twice), the two evaluations must agree exactly; the figures must be
those of a trained model over the whole of each split. The evaluations run in this process (the script starts a
fresh process per source tree; importing torch and Keras twice would take most of a minute here).
"""

import argparse
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import evaluation  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.slow
def test_quick_mode_evaluates_the_same_model_in_each_tree(monkeypatch):
    trees = []

    def in_process(tree, directory, precision, threads):
        trees.append(tree)
        return evaluation.child(directory, precision, 0)

    monkeypatch.setattr(evaluation, "run_child", in_process)
    args = argparse.Namespace(quick=True, data=None, preset="tiny", max_vocabulary_size=0, train_steps=20,
                              tokens=0, precision="float32", compare=[str(SRC)], repeats=1, threads=1)
    result = evaluation.run(args, log=lambda line: None)

    assert trees == [SRC, SRC] and list(result["results"]) == [str(SRC)]  # the same tree twice: one entry
    row = result["results"][str(SRC)]
    assert row["repeats"] == 2
    vocabulary = result["config"]["vocabulary_size"]
    for split in evaluation.SPLITS:
        assert row[split]["tokens"] == result["config"]["tokens"][split]  # every token scored (after an <eos>)
        assert row[split]["perplexity"] == pytest.approx(math.exp(row[split]["loss"]), rel=1e-9)
        assert 1 < row[split]["perplexity"] < vocabulary  # trained: better than uniform over the vocabulary
        assert 0 <= row[split]["accuracy"] <= row[split]["top5_accuracy"] <= 1
    assert result["comparison"]["perplexity_relative_difference"] == {"valid": 0.0, "test": 0.0}
    assert "Speed-up valid + test" in evaluation.markdown(result)
