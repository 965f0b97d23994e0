"""benchmarks/race.py, its real peer (benchmarks/real_peer.py: pytorch/examples' program, run by path) and its
fallback re-implementation (benchmarks/peer_word_language_model.py).

The quick race runs lstmlm and the re-implementation for real (a PTB slice, 20-second budgets, one thread each,
side by side) and checks what makes the comparison fair and the report usable; no perplexity target (a 20-second
run on a shared machine is too noisy for one). The real program is not in this repository (it is fetched to a
directory outside it: docs/race.md, "The real peer"): one test runs it end to end where a checkout is found
($LSTMLM_PEER_DIR, else /work/peers/pytorch-examples), and a stand-in with its command line, written to tmp_path,
tests the plumbing (arguments, files, the SIGINT at the budget, reading its printed lines) on every machine.
"""

import json
import math
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_word_language_model as peer  # noqa: E402
import race  # noqa: E402
import real_peer  # noqa: E402

PEER_CHECKOUT = Path(os.environ.get("LSTMLM_PEER_DIR", "/work/peers/pytorch-examples"))


@pytest.mark.slow
def test_quick_race_gives_finite_fair_numbers_and_a_table(tmp_path):
    args = race.parse_args(["--quick", "--peer", "reimplementation", "--threads", "1", "--out",
                            str(tmp_path / "race")])
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


# ---- the real peer --------------------------------------------------------------------------------------------
def tiny_corpus(directory, lines=(300, 50, 50)):
    """The first lines of bundled PTB's splits, as files: {split: Path}."""
    import gzip

    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in zip(("train", "valid", "test"), lines):
        text = gzip.decompress(race.bundled_ptb_path(split).read_bytes()).decode("utf-8").splitlines(True)[:count]
        paths[split] = directory / f"tiny.{split}.txt"
        paths[split].write_text("".join(text), encoding="utf-8")
    return paths


def run_real_side(peer_dir, paths, out, minutes, peer_args=""):
    args = SimpleNamespace(peer_dir=str(peer_dir), seed=3, peer_args=peer_args, minutes=minutes, threads=1)
    out.mkdir(parents=True, exist_ok=True)
    return real_peer.side(args, sys.executable, paths, out, 300, race.child_environment(1), race.split_tokens,
                          [sys.executable, str(Path(race.__file__).parent / "real_peer.py")])


STAND_IN = textwrap.dedent("""\
    # A stand-in with the command line of pytorch/examples' word_language_model/main.py (tests only): it records
    # its arguments, prints lines in the program's format until SIGINT, then its test line, as the program does.
    import argparse, json, sys, time
    parser = argparse.ArgumentParser()
    for flag in ("--data", "--save", "--onnx-export"):
        parser.add_argument(flag)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--tied", action="store_true")
    args = parser.parse_args()
    json.dump({"argv": sys.argv[1:], "threads": __import__("os").environ.get("OMP_NUM_THREADS")},
              open("stand-in-arguments.json", "w"))
    print("Using device: cpu")
    time.sleep(1.0)  # "reading the corpus": before the budget's clock starts
    try:
        for epoch in range(1, args.epochs + 1):
            time.sleep(0.3)
            print("| epoch %3d | %5d/%5d batches | lr 20.00 | ms/batch %5.2f | loss  6.00 | ppl   403.43" % (
                epoch, 1, 4, 300.0))
            time.sleep(0.3)
            print("-" * 89)
            print("| end of epoch %3d | time: %5.2fs | valid loss %5.2f | valid ppl %8.2f" % (
                epoch, 0.6, 6.0 - epoch / 10, 403.43 / (1 + epoch)))
            print("-" * 89)
    except KeyboardInterrupt:
        print("-" * 89)
        print("Exiting from training early")
    print("=" * 89)
    print("| End of training | test loss %5.2f | test ppl %8.2f" % (5.5, 244.69))
    print("=" * 89)
""")


def write_stand_in(checkout):
    """A pytorch/examples checkout holding the stand-in as word_language_model/main.py."""
    program = checkout / "word_language_model"
    program.mkdir(parents=True)
    (program / "main.py").write_text(STAND_IN)
    (program / "data.py").write_text("# the stand-in has no corpus code\n")
    (program / "model.py").write_text("")


def test_real_peer_plumbing_with_a_stand_in(tmp_path):
    """The real-peer path against a stand-in main.py written here (the real program is not in the repository;
    the next test runs it where a checkout exists): the command line it gets, the data directory, SIGINT at the
    budget counted from its training start, and its printed lines read back into the race's numbers."""
    write_stand_in(tmp_path / "examples")
    paths = tiny_corpus(tmp_path / "corpus")
    plain_test = paths["test"]
    paths["test"] = plain_test.with_suffix(".txt.gz")  # gzipped, as lstmlm's bundled PTB is
    paths["test"].write_bytes(__import__("gzip").compress(plain_test.read_bytes()))
    side = run_real_side(tmp_path / "examples", paths, tmp_path / "race", minutes=3 / 60)

    assert "error" not in side, side
    called = json.loads((tmp_path / "race" / "stand-in-arguments.json").read_text())
    argv = called["argv"]
    assert called["threads"] == "1" and "--tied" in argv and argv[argv.index("--seed") + 1] == "3"
    data = Path(argv[argv.index("--data") + 1])
    for split in ("train", "valid"):  # the same files lstmlm reads, by symlink
        assert (data / f"{split}.txt").resolve() == paths[split].resolve()
    assert (data / "test.txt").read_bytes() == plain_test.read_bytes()  # a .gz split: a decompressed copy
    assert argv[argv.index("--onnx-export") + 1].endswith("peer-model.onnx")
    assert side["stopped_by"] == "the budget (SIGINT)"
    assert 0.9 <= side["training_start_seconds"] <= 4  # after its 1-second "corpus reading"
    assert 2.9 <= side["training_wall_seconds"] <= 4.5  # the 3-second budget, from the training start
    assert side["epochs_validated"] == len(side["history"]) >= 3
    assert side["best_epoch"] == side["history"][-1]["epoch"]  # valid loss falls every epoch
    assert side["printed"]["test"]["perplexity"] == 244.69
    assert side["printed"]["test"]["tokens"] == real_peer.stream_tokens(race.split_tokens(plain_test))
    assert side["tokens_per_second"] == pytest.approx(20 * 35 / 0.3, abs=0.1)  # its batch of 20 x 35, 300 ms
    # no ONNX export: the printed numbers are the final ones, marked as not exact, and the race says so
    assert side["final"]["test"]["exact"] is False and "no ONNX export" in side["exact_error"]
    assert side["program"]["commit"] is None and side["program"]["unmodified"] is None


@pytest.mark.skipif(not (PEER_CHECKOUT / "word_language_model" / "main.py").is_file(),
                    reason=f"no pytorch/examples checkout at {PEER_CHECKOUT} (set LSTMLM_PEER_DIR; docs/race.md)")
def test_real_program_end_to_end_on_a_tiny_corpus(tmp_path):
    """pytorch/examples' main.py itself, unmodified, on 300 lines of PTB for an 8-second budget (epochs of a
    fraction of a second, so the budget, not its epoch limit, stops it), then the exact score of its ONNX export."""
    paths = tiny_corpus(tmp_path / "corpus")
    side = run_real_side(PEER_CHECKOUT, paths, tmp_path / "race", minutes=8 / 60, peer_args="--epochs 1000")

    assert "error" not in side, side.get("log_tail")
    assert side["program"]["unmodified"] in (True, None) and side["program"]["commit"]
    assert side["stopped_by"] == "the budget (SIGINT)" and side["epochs_validated"] >= 1
    assert side["training_wall_seconds"] == pytest.approx(8, abs=3)
    assert side["vocabulary_size"] == side["vocabulary_size_of_its_corpus_code"]  # its data.py rule, recounted
    printed, exact = side["printed"]["test"], side["final"]["test"]
    assert exact["exact"] and exact["tokens"] == race.split_tokens(paths["test"])
    assert math.isfinite(exact["perplexity"]) and exact["perplexity"] < side["vocabulary_size"] / 2  # it learned
    # the same model by two rules (10 cold streams, trimmed, against one carried stream): close, not equal
    assert exact["perplexity"] == pytest.approx(printed["perplexity"], rel=0.1)
    assert exact["perplexity"] == pytest.approx(math.exp(exact["loss"]))
    assert (tmp_path / "race" / "peer-model.pt").is_file()  # its pickled model: written by it, never loaded here


def test_the_program_s_lines_are_read():
    lines = [(0.0, "| epoch   1 |   200/ 1327 batches | lr 20.00 | ms/batch 45.07 | loss  7.63 | ppl  2063.01"),
             (9.0, "| end of epoch   1 | time: 64.03s | valid loss  6.02 | valid ppl   411.40"),
             (9.5, "Exiting from training early"),
             (12.0, "| End of training | test loss  5.97 | test ppl   392.47")]
    printed = real_peer.parse(lines)
    assert printed["progress"][0] == {"epoch": 1, "batch": 200, "batches": 1327, "learning_rate": 20.0,
                                      "ms_per_batch": 45.07}
    assert printed["epochs"] == [{"epoch": 1, "seconds": 64.03, "valid_loss": 6.02, "valid_perplexity": 411.4}]
    assert printed["test"] == {"loss": 5.97, "perplexity": 392.47} and printed["stopped_early"]
    assert real_peer.stream_tokens(82430) == 82420


def test_race_asks_for_the_real_program_or_the_named_fallback(monkeypatch, capsys):
    monkeypatch.delenv("LSTMLM_PEER_DIR", raising=False)
    with pytest.raises(SystemExit):
        race.parse_args(["--quick"])
    assert "--peer-dir" in capsys.readouterr().err
    assert race.parse_args(["--quick", "--peer", "reimplementation"]).peer == "reimplementation"
    with pytest.raises(SystemExit, match="no word_language_model/main.py"):
        race.parse_args(["--quick", "--peer-dir", "/nonexistent"])


def test_the_budget_stops_the_program_when_the_race_runs_with_sigint_ignored(tmp_path):
    """A race started in the background (`race.py ... &`, nohup) runs with SIGINT ignored, and a child inherits
    that: Python then installs no KeyboardInterrupt handler, and the budget's SIGINT would be lost (the program ran
    on past its budget in the first real race of this kind). The child gets SIGINT's default back, so the budget
    still stops it."""
    import signal

    write_stand_in(tmp_path / "examples")
    paths = tiny_corpus(tmp_path / "corpus")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        side = run_real_side(tmp_path / "examples", paths, tmp_path / "race", minutes=3 / 60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert side["stopped_by"] == "the budget (SIGINT)"
    assert side["epochs_validated"] <= 6  # 3 s of 0.6-second epochs, not the stand-in's 40 epochs (24 s)
