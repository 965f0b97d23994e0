"""Bad input: one line on stderr starting 'lstmlm', a non-zero exit, no traceback, nothing on disk damaged."""

import re
import shutil

import pytest
from helpers import tree_digest

from lstmlm.data import corpus as corpus_module
from lstmlm.data.download import download
from lstmlm.training import epoch as epoch_module
from lstmlm.cli import main
from lstmlm.errors import LstmlmError


@pytest.fixture
def untouched(tiny_run):
    """The shared run directory, checked byte for byte after the test."""
    before = tree_digest(tiny_run)
    yield tiny_run
    assert tree_digest(tiny_run) == before


def fails(capsys, argv, pattern, status=2):
    """Run the CLI and check the error contract; returns stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors exit from inside parse_args
        code = exit_.code
    captured = capsys.readouterr()
    assert code == status, captured.err
    assert code != 0
    assert captured.err.startswith("lstmlm"), captured.err
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err  # exactly one line
    assert "Traceback" not in captured.err + captured.out
    assert re.search(pattern, captured.err), captured.err
    return captured.err


def train_argv(paths, out, *extra):
    return ["train", "--preset", "tiny", "--hidden-size", "8", "--epochs", "1", "--precision", "float32",
            "--train", paths["train"], "--valid", paths["valid"], "--out", out, "--no-report", *extra]


def test_missing_file(capsys, toy_corpus, tmp_path, untouched):
    paths = {**toy_corpus, "valid": tmp_path / "nope.txt"}
    fails(capsys, train_argv(paths, tmp_path / "out"), r"^lstmlm: error: .*nope\.txt: no such file")
    assert not (tmp_path / "out").exists()
    fails(capsys, ["evaluate", untouched, "--file", tmp_path / "nope.txt"], r"nope\.txt: no such file")


@pytest.mark.parametrize("text", ["", "   \n\t\n\n"])
def test_empty_or_whitespace_corpus(capsys, toy_corpus, tmp_path, text):
    empty = tmp_path / "empty.txt"
    empty.write_text(text, encoding="utf-8")
    fails(capsys, train_argv({**toy_corpus, "train": empty}, tmp_path / "out"),
          r"empty\.txt: contains no words \(empty or whitespace only\)")
    assert not (tmp_path / "out").exists()


def test_not_utf8(capsys, toy_corpus, tmp_path, untouched):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"the cat sees\nthe dog\nna\xefve caf\xe9\n")
    fails(capsys, train_argv({**toy_corpus, "train": bad}, tmp_path / "out"),
          r"latin1\.txt: line 3: bytes that are not UTF-8")
    assert not (tmp_path / "out").exists()
    fails(capsys, ["evaluate", untouched, "--file", bad], r"latin1\.txt: line 3: bytes that are not UTF-8")


def test_corpus_too_short_for_one_batch(capsys, toy_corpus, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("hello\n", encoding="utf-8")
    fails(capsys, train_argv({**toy_corpus, "train": short}, tmp_path / "out", "--batch-size", "8"),
          r"too short for one batch")
    fails(capsys, train_argv({**toy_corpus, "train": short}, tmp_path / "out", "--batching", "window"),
          r"too short")
    assert not (tmp_path / "out").exists()


def test_unknown_preset_and_flag(capsys, tmp_path):
    fails(capsys, ["train", "--preset", "enormous", "--out", tmp_path / "out"],
          r"^lstmlm train: error: argument --preset: invalid choice: 'enormous'")
    fails(capsys, ["train", "--hidden-sise", "8", "--out", tmp_path / "out"], r"unrecognized arguments: --hidden-sise")
    fails(capsys, ["frobnicate"], r"^lstmlm: error: argument verb: invalid choice")
    fails(capsys, ["train", "--hidden-size", "eight"], r"--hidden-size: expected int, got 'eight'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", r"--batch-size must be a positive integer, got 0"),
    ("--hidden-size", "-1", r"--hidden-size must be a positive integer, got -1"),
    ("--num-steps", "0", r"--num-steps must be a positive integer"),
    ("--dropout", "1.5", r"--dropout must be in \[0, 1\)"),
    ("--learning-rate", "0", r"--learning-rate must be > 0"),
])
def test_non_positive_sizes(capsys, toy_corpus, tmp_path, flag, value, message):
    fails(capsys, train_argv(toy_corpus, tmp_path / "out", flag, value), message)
    assert not (tmp_path / "out").exists()


def test_evaluate_batch_size_zero(capsys, untouched):
    fails(capsys, ["evaluate", untouched, "--evaluation-batch-size", "0"], r"--evaluation-batch-size must be positive")


def test_missing_or_incomplete_run_directory(capsys, tmp_path, untouched):
    fails(capsys, ["evaluate", tmp_path / "no-such-run"], r"no-such-run: no such run directory")
    fails(capsys, ["predict", tmp_path / "no-such-run", "--text", "the"], r"no such run directory")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(untouched, incomplete)
    (incomplete / "model.keras").unlink()
    before = tree_digest(incomplete)
    fails(capsys, ["evaluate", incomplete], r"incomplete run directory, missing model\.keras")
    fails(capsys, ["generate", incomplete, "--num-words", "3"], r"missing model\.keras")
    assert tree_digest(incomplete) == before
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    fails(capsys, ["evaluate", a_file], r"not a directory")
    (incomplete / "state.json").unlink()
    fails(capsys, ["train", "--resume", incomplete], r"no state\.json, nothing to resume")


def test_corrupt_model_file(capsys, tmp_path, untouched):
    broken = tmp_path / "broken"
    shutil.copytree(untouched, broken)
    (broken / "model.keras").write_bytes(b"not a zip file")
    fails(capsys, ["evaluate", broken], r"model\.keras: the model file is damaged \(not a \.keras zip archive")


def test_out_pointing_at_an_existing_run(capsys, toy_corpus, untouched):
    fails(capsys, train_argv(toy_corpus, untouched), r"already holds a run \(use --resume")


def test_prompt_of_only_unknown_words(capsys, untouched):
    status = main(["predict", str(untouched), "--text", "zorblax qwerty", "--json"])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.err == "note: not in the vocabulary, read as <unk>: zorblax qwerty\n"
    import json

    result = json.loads(captured.out)
    assert result["unknown_words"] == ["zorblax", "qwerty"]
    words = result["predictions"]
    assert len(words) == 5 and all(0 < w["probability"] <= 1 for w in words)


def test_predict_needs_text_or_split(capsys, untouched):
    fails(capsys, ["predict", untouched], r"give exactly one of --text or --split")
    fails(capsys, ["predict", untouched, "--split", "test", "--skip", "100000"], r"--skip 100000 .* only \d+ tokens")


def test_corrupted_bundled_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(corpus_module.PTB_SHA256, "test", "f" * 64)
    fails(capsys, ["train", "--preset", "tiny", "--out", tmp_path / "out"], r"ptb\.test\.txt\.gz: sha256 [0-9a-f]{64} "
          r"does not match the published f{64}")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_exits_130_and_leaves_a_resumable_run(capsys, toy_corpus, tmp_path, monkeypatch):
    calls = []
    real_step = epoch_module.train_step

    def interrupting_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", interrupting_step)
    out = tmp_path / "out"
    status = main([str(a) for a in train_argv(toy_corpus, out)])
    captured = capsys.readouterr()
    assert status == 130
    assert captured.err.splitlines()[-1] == "lstmlm: interrupted"
    assert "interrupted in epoch 1 after 2 batches" in captured.err and "Traceback" not in captured.err
    assert (out / "checkpoints" / "interrupted.keras").is_file() and not (out / "model.keras").exists()
    fails(capsys, ["evaluate", out], r"missing model\.keras \(has training finished an epoch\?\)")
    monkeypatch.setattr(epoch_module, "train_step", real_step)
    assert main(["train", "--resume", str(out), "--no-report"]) == 0
    assert (out / "model.keras").is_file() and (out / "checkpoints" / "model-01.keras").is_file()


def test_split_the_run_does_not_have(capsys, toy_corpus, tmp_path):
    # its own run: the shared tiny_run has a test split, this one must not
    out = tmp_path / "no-test"
    argv = train_argv(toy_corpus, out)  # --train and --valid only
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    before = tree_digest(out)
    fails(capsys, ["predict", out, "--split", "test", "--count", "2"], r"--split test: this run has no test split")
    fails(capsys, ["evaluate", out, "--split", "test"], r"--split test: this run has no test split")
    assert tree_digest(out) == before


def test_errors_found_by_the_cli_fuzz(capsys, tmp_path, untouched):
    """tests/test_properties.py::test_cli_fuzz found these; each was a traceback or a two-line error."""
    fails(capsys, ["generate", untouched, "--seed", "-1"], r"--seed must be >= 0, got -1")
    fails(capsys, ["generate", untouched, "--temperature", "nan"], r"temperature must be a finite number >= 0")
    fails(capsys, ["evaluate", tmp_path / "a\nb"], r"a\\nb: no such run directory")  # one line, newline escaped
    fails(capsys, ["evaluate", untouched, "--bogus\u2028flag"], r"unrecognized arguments: --bogus\\u2028flag")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    fails(capsys, ["plot", untouched, "--out", a_file], r"--out .*file\.txt: exists and is not a folder")
    fails(capsys, ["inspect", untouched, "--text", "the cat", "--out", tmp_path / "gates.txt"],
          r"gates\.txt: cannot write the figure \(Format 'txt' is not supported")
    fails(capsys, ["inspect", untouched, "--text", "the cat", "--out", a_file / "gates.png"],
          r"file\.txt/gates\.png: cannot write")
    fails(capsys, ["download", "https://192.0.2.1/f.txt", "--out", a_file], r"--out .*file\.txt: exists and is not a "
                                                                           r"folder")
    with pytest.raises(LstmlmError, match=r"^out_dir .*file\.txt: exists and is not a folder$"):  # the library's
        download("https://192.0.2.1/f.txt", a_file)
    assert a_file.read_text(encoding="utf-8") == "x" and not (tmp_path / "gates.txt").exists()


@pytest.mark.parametrize("content", [b'{"hidden_size": 8, "note": "caf\xe9"}', None], ids=["latin-1", "folder"])
def test_config_file_not_utf8_or_a_folder(capsys, tmp_path, content):
    path = tmp_path / "config.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    fails(capsys, ["train", "--preset", "tiny", "--config", path, "--print-config"], r"config\.json: ")


def test_every_preset_is_a_valid_config_and_speedrun_adaptive_differs_only_in_its_softmax():
    import dataclasses

    from lstmlm.presets import PRESETS, preset

    configs = {name: preset(name) for name in PRESETS}  # each validates in Config.__post_init__
    differing = {field.name for field in dataclasses.fields(configs["speedrun"])
                 if getattr(configs["speedrun"], field.name) != getattr(configs["speedrun-adaptive"], field.name)}
    assert differing == {"softmax"} and configs["speedrun-adaptive"].softmax == "adaptive"
    assert configs["speedrun"].evaluation_batch_size == 10 and configs["small"].evaluation_batch_size == 1


@pytest.mark.parametrize("name, report, minutes, threads, flag", [
    ("speedrun-wide", "ptb-60min-2t-sequential-2x384.json", "60", "2", ("hidden_size", 384)),
    ("speedrun-light", "ptb-15min-1t-parallel-2.json", "15", "1", ("weight_drop", 0.0)),
])
def test_speedrun_variants_are_the_recipes_the_races_measured(capsys, name, report, minutes, threads, flag):
    """Each preset is what docs/race.md reports: the race's `lstmlm train` command (speedrun plus flags) and
    `--preset NAME` with the race's budget resolve to the same config (`--out` is not part of it)."""
    import json
    import shlex
    from pathlib import Path

    report = Path(__file__).resolve().parents[1] / "docs" / "runs" / "race" / report
    command = shlex.split(json.loads(report.read_text(encoding="utf-8"))["sides"]["lstmlm"]["commands"][0])
    argv = command[command.index("train"):]

    def resolved(arguments):
        assert main(arguments + ["--print-config"]) == 0
        return json.loads(capsys.readouterr().out)

    raced = resolved(argv)
    assert raced[flag[0]] == flag[1] and "--preset" in argv and argv[argv.index("--preset") + 1] == "speedrun"
    assert raced != resolved(["train", "--preset", "speedrun", "--max-minutes", minutes, "--threads", threads,
                              "--seed", "1", "--no-report"])
    assert resolved(["train", "--preset", name, "--max-minutes", minutes, "--threads", threads, "--seed", "1",
                     "--no-report"]) == raced
