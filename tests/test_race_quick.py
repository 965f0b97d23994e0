"""benchmarks/race.py and its peer (benchmarks/peer_word_language_model.py).

The quick race runs both sides for real (a PTB slice, 20-second budgets, one thread each, side by side) and checks
what makes the comparison fair and the report usable; no perplexity target (a 20-second run on a shared machine
is too noisy for one). The other tests check the peer's pieces in-process, in a second or two.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_word_language_model as peer  # noqa: E402
import race  # noqa: E402


@pytest.mark.slow
def test_quick_race_gives_finite_fair_numbers_and_a_table(tmp_path):
    args = race.parse_args(["--quick", "--threads", "1", "--out", str(tmp_path / "race")])
    result = race.race(args, log=lambda line: None)

    lstmlm, other = result["sides"]["lstmlm"], result["sides"]["peer"]
    assert "error" not in lstmlm, lstmlm.get("log_tail")
    assert "error" not in other, other.get("log_tail")
    checks = result["checks"]
    assert checks["complete"] and checks["same_vocabulary"] and checks["finite"]
    assert checks["same_valid_tokens"] and checks["same_test_tokens"]
    # every token of the test file, counted independently: words + one <eos> per line
    test_tokens = race.split_tokens(tmp_path / "race" / "quick-corpus" / "quick.test.txt")
    assert lstmlm["final"]["test"]["tokens"] == other["final"]["test"]["tokens"] == test_tokens
    for side in (lstmlm, other):
        assert side["threads"] == 1
        for split in ("valid", "test"):
            perplexity = side["final"][split]["perplexity"]
            # both learned in 20 s: far better than a uniform guess over the vocabulary (4,000+ words)
            assert math.isfinite(perplexity) and 1 < perplexity < side["vocabulary_size"] / 2, (split, side)
            assert math.isclose(perplexity, math.exp(side["final"][split]["loss"]), rel_tol=1e-4)
        assert side["epochs"] > 0 and side["tokens_per_second"] > 0
        # each side trained until its budget (20 s), not stopped early by an epoch limit
        assert side["training_wall_seconds"] >= 0.8 * 60 * race.QUICK_MINUTES
    assert checks["lstmlm_test_lower_by_percent"] == pytest.approx(
        100 * (1 - lstmlm["final"]["test"]["perplexity"] / other["final"]["test"]["perplexity"]), abs=0.01)

    saved = json.loads((tmp_path / "race" / "result.json").read_text())
    assert saved["checks"] == checks
    table = (tmp_path / "race" / "result.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    side_by_side = [row for row in rows if row.count("|") == 4]
    assert side_by_side[0].startswith("| | lstmlm `--preset speedrun` | peer")
    assert len(side_by_side) == 10  # header + 9 measured rows
    assert f"{lstmlm['final']['test']['perplexity']:.2f}" in table
    assert f"{other['final']['test']['perplexity']:.2f}" in table
    assert "-m lstmlm train --preset speedrun" in table and "peer_word_language_model.py" in table
    assert race.summary_row(saved) in table and "20 s" in race.summary_row(saved)
    assert "Intel" in table or "AMD" in table or "Machine:" in table


def test_batchify_cuts_streams_and_drops_the_tail():
    stream = peer.batchify(np.arange(23), 4)  # (time, streams)
    assert stream.shape == (5, 4)
    assert stream[:, 1].tolist() == [5, 6, 7, 8, 9]


def test_peer_model_ties_the_softmax_to_the_embedding():
    model = peer.PeerModel(30, size=6, layers=2, dropout=0.2)
    assert model.decoder.weight is model.embedding.weight
    assert model.lstm.dropout == 0.2  # between the layers, as nn.LSTM applies it
    assert float(model.embedding.weight.detach().abs().max()) <= 0.1
    assert float(model.decoder.bias.detach().abs().max()) == 0.0


def test_exact_evaluation_counts_every_token_and_ignores_chunk_length():
    torch.manual_seed(0)
    model = peer.PeerModel(20, size=8, layers=2, dropout=0.5)
    ids = np.random.default_rng(0).integers(0, 20, size=101)
    short = peer.evaluate_exact(model, ids, eos_id=3, chunk_length=7)
    long = peer.evaluate_exact(model, ids, eos_id=3, chunk_length=256)
    assert short["tokens"] == long["tokens"] == 101  # the leading <eos> predicts the first word
    assert short["loss"] == pytest.approx(long["loss"], rel=1e-5)
    assert short["perplexity"] == pytest.approx(math.exp(short["loss"]))
    # the same number by a naive loop: one token at a time, state carried, dropout off
    state, total = None, 0.0
    model.eval()
    with torch.no_grad():
        text = torch.as_tensor(np.concatenate([[3], ids]))
        for i in range(len(ids)):
            logits, state = model(text[i : i + 1, None], state)
            total -= torch.log_softmax(logits[0, 0], -1)[text[i + 1]].item()
    assert short["loss"] == pytest.approx(total / 101, rel=1e-5)


def test_peer_uses_lstmlm_ids(toy_corpus):
    from lstmlm.data.corpus import load_corpus

    from conftest import tiny_config

    corpus = peer.lstmlm_corpus(train=str(toy_corpus["train"]), valid=str(toy_corpus["valid"]),
                                test=str(toy_corpus["test"]))
    reference = load_corpus(tiny_config(toy_corpus))
    assert corpus.vocabulary.words == reference.vocabulary.words
    for split in ("train", "valid", "test"):
        assert np.array_equal(corpus[split], reference[split])


def test_budget_is_checked_between_batches():
    torch.manual_seed(0)
    model = peer.PeerModel(20, size=8, layers=2, dropout=0.2)
    stream = peer.batchify(np.random.default_rng(1).integers(0, 20, size=2001), 4)  # 500 steps -> 50 batches
    calls = []

    def out_of_time():
        calls.append(1)
        return len(calls) > 3

    _, tokens, batches, stopped = peer.train_epoch(model, stream, 20.0, 0.25, 10, out_of_time, lambda line: None, 1)
    assert (batches, tokens, stopped) == (3, 3 * 10 * 4, True)
    _, tokens, batches, stopped = peer.train_epoch(model, stream, 20.0, 0.25, 10, lambda: False, lambda l: None, 1)
    assert (batches, stopped) == (50, False) and tokens == 499 * 4


def test_peer_run_keeps_the_best_model_and_quarters_the_rate_when_validation_stalls(toy_corpus, tmp_path):
    args = peer.parse_args(["--train", str(toy_corpus["train"]), "--valid", str(toy_corpus["valid"]), "--test",
                            str(toy_corpus["test"]), "--size", "16", "--bptt", "8", "--batch-size", "4",
                            "--eval-batch-size", "2", "--epochs", "6", "--learning-rate", "40", "--threads", "1",
                            "--json", str(tmp_path / "peer.json")])
    result = peer.run(args, log=lambda line: None)

    assert json.loads((tmp_path / "peer.json").read_text())["final"] == result["final"]
    history = result["history"]
    assert len(history) == 6 and not result["stopped_by_budget"]
    assert any(row["learning_rate"] == 10.0 for row in history)  # this seed stalls once: both branches run
    best = math.inf
    for previous, row in zip(history, history[1:]):  # lr / 4 exactly after an epoch that did not improve
        improved = previous["valid_loss"] < best
        best = min(best, previous["valid_loss"])
        assert row["learning_rate"] == previous["learning_rate"] / (1 if improved else 4)
    best_row = min(history, key=lambda row: row["valid_loss"])
    assert result["best_epoch"] == best_row["epoch"]
    # the final report is the best-validation model's (exact at batch 1, so close to, not equal to, 2 streams')
    assert result["final"]["valid"]["loss"] == pytest.approx(best_row["valid_loss"], rel=0.05)
    assert result["final"]["test"]["tokens"] == race.split_tokens(toy_corpus["test"])
    assert result["epochs"] == pytest.approx(6 * history[0]["train_tokens"] / result["tokens"]["train"], rel=1e-3)
