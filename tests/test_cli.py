"""The lstmlm command end to end on a tiny corpus: train -> evaluate -> predict -> generate."""

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lstmlm.cli import main

TRAIN_FLAGS = ["--preset", "tiny", "--hidden-size", "16", "--num-steps", "8", "--epochs", "2",
               "--learning-rate", "0.03", "--precision", "float32"]


@pytest.fixture(scope="module")
def cli_run(toy_corpus, tmp_path_factory):
    """A run trained through `lstmlm train`, with the report it printed.

    Its own model, not conftest's tiny_run: training through the CLI (flags over a preset, the recorded
    command, the final report) is what test_train_writes_a_run_and_reports checks; the other tests here reuse it.
    """
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", *TRAIN_FLAGS, "--train", str(toy_corpus["train"]), "--valid", str(toy_corpus["valid"]),
            "--test", str(toy_corpus["test"]), "--out", str(out)]
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return out, argv, status, stdout.getvalue(), stderr.getvalue()


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_train_writes_a_run_and_reports(cli_run):
    out, argv, status, stdout, stderr = cli_run
    assert status == 0
    assert (out / "model.keras").is_file() and (out / "checkpoints" / "model-02.keras").is_file()
    info = json.loads((out / "config.json").read_text())
    assert info["command"] == "lstmlm " + " ".join(shlex.quote(a) for a in argv)
    assert info["config"]["hidden_size"] == 16 and info["config"]["num_layers"] == 2  # preset + overrides
    assert info["config"]["epochs"] == 2 and info["config"]["optimizer"] == "adam"
    assert "epoch 2: train loss" in stderr
    assert f"best model: {out}/model.keras" in stdout
    assert "valid: loss" in stdout and "test: loss" in stdout
    assert "Actual words:" in stdout and "Predicted words:" in stdout


def test_evaluate_json(cli_run, capsys, toy_corpus):
    """`evaluate --json` prints the library's result dict, every key of it."""
    from lstmlm.inference.language_model import load

    out = cli_run[0]
    status, stdout, _ = run_cli(capsys, "evaluate", out, "--json")
    assert status == 0
    result = json.loads(stdout)
    assert list(result) == ["split", "tokens", "loss", "perplexity", "accuracy", "top5_accuracy", "seconds",
                            "num_unknown_words", "bits_per_character", "word_perplexity", "characters", "words"]
    assert result["word_perplexity"] == result["perplexity"]  # a word run's tokens are its words
    library = load(out).evaluate()
    assert list(library) == list(result)
    numbers = ["tokens", "loss", "perplexity", "accuracy", "top5_accuracy", "num_unknown_words"]
    assert [result[k] for k in numbers] == pytest.approx([library[k] for k in numbers], rel=1e-9)
    assert result["num_unknown_words"] == 0
    assert result["split"] == "test"
    assert result["tokens"] == len(toy_corpus["test"].read_text().split()) + \
        toy_corpus["test"].read_text().count("\n")
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert 0 <= result["accuracy"] <= result["top5_accuracy"] <= 1
    # the same numbers through --file, and the valid split
    status, stdout, _ = run_cli(capsys, "evaluate", out, "--file", toy_corpus["test"], "--json")
    by_file = json.loads(stdout)
    assert by_file["loss"] == pytest.approx(result["loss"], rel=1e-9) and by_file["split"] == str(toy_corpus["test"])
    status, stdout, _ = run_cli(capsys, "evaluate", out, "--split", "valid")
    assert status == 0 and stdout.startswith("valid: loss ") and "perplexity" in stdout


def test_predict_text_json(cli_run, capsys):
    from lstmlm.inference.language_model import load

    status, stdout, stderr = run_cli(capsys, "predict", cli_run[0], "--text", "the cat", "--top-k", "4", "--json")
    assert status == 0 and stderr == ""
    result = json.loads(stdout)
    assert result == load(cli_run[0]).predict_next("the cat", top_k=4)  # the library's dict, as it is
    assert result["unknown_words"] == []
    words = result["predictions"]
    assert len(words) == 4
    probabilities = [entry["probability"] for entry in words]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-9
    status, stdout, _ = run_cli(capsys, "predict", cli_run[0], "--text", "the cat")
    lines = stdout.splitlines()
    assert len(lines) == 5 and lines[0].split()[1] == words[0]["word"]


def test_predict_split_report(cli_run, capsys):
    status, stdout, _ = run_cli(capsys, "predict", cli_run[0], "--split", "test", "--skip", "0", "--count", "3")
    assert status == 0
    lines = stdout.splitlines()
    actual = next(line for line in lines if line.startswith("Actual words: "))
    predicted = next(line for line in lines if line.startswith("Predicted words: "))
    assert len(actual.split()) == 2 + 3 and len(predicted.split()) == 2 + 3
    # the actual words are test words 8, 9, 10 (num_steps 8, skip 0)
    from lstmlm.data.tokenizer import read_words

    test_words = read_words(Path(json.loads((cli_run[0] / "config.json").read_text())["config"]["test"]))
    assert actual.split()[2:] == test_words[8:11]
    status, stdout, _ = run_cli(capsys, "predict", cli_run[0], "--split", "test", "--skip", "0", "--count", "3",
                                "--json")
    result = json.loads(stdout)
    assert result["actual"] == test_words[8:11] and result["predicted"] == predicted.split()[2:]


def test_generate_with_seed(cli_run, capsys):
    outputs = []
    for seed in (4, 4, 5):
        status, stdout, _ = run_cli(capsys, "generate", cli_run[0], "--prompt", "my friend", "--num-words", "25",
                                    "--seed", seed)
        assert status == 0
        outputs.append(stdout)
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert outputs[0].startswith("my friend ")
    status, stdout, _ = run_cli(capsys, "generate", cli_run[0], "--num-words", "10", "--temperature", "0", "--json")
    result = json.loads(stdout)
    assert list(result) == ["prompt_words", "words", "text", "unknown_words", "finish_reason"]
    assert result["finish_reason"] == "num_words"
    assert len(result["words"]) == 10 and result["prompt_words"] == [] and result["unknown_words"] == []


def test_generate_defaults_to_default_num_words(cli_run, capsys):
    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    status, stdout, _ = run_cli(capsys, "generate", cli_run[0], "--temperature", "0", "--json")
    assert status == 0 and DEFAULT_NUM_WORDS == 30 and len(json.loads(stdout)["words"]) == DEFAULT_NUM_WORDS


@pytest.mark.parametrize("verb, old, new, value", [("generate", "--words", "--num-words", "7"),
                                                    ("evaluate", "--batch-size", "--evaluation-batch-size", "3")])
def test_deprecated_flags_still_work_and_say_so(cli_run, capsys, verb, old, new, value):
    extra = ["--temperature", "0"] if verb == "generate" else []
    status, new_out, new_err = run_cli(capsys, verb, cli_run[0], new, value, *extra, "--json")
    assert status == 0 and new_err == ""
    status, old_out, old_err = run_cli(capsys, verb, cli_run[0], old, value, *extra, "--json")
    assert status == 0 and old_err == f"lstmlm: note: {old} is deprecated, use {new}\n"
    drop_seconds = lambda out: {k: v for k, v in json.loads(out).items() if k != "seconds"}  # noqa: E731
    assert drop_seconds(old_out) == drop_seconds(new_out)
    from lstmlm.cli import build_parser

    verb_parser = build_parser()._subparsers._group_actions[0].choices[verb]
    assert new in verb_parser.format_help() and old not in verb_parser.format_help()


def test_print_config(capsys, toy_corpus):
    status, stdout, _ = run_cli(capsys, "train", "--preset", "tiny", "--hidden-size", "24", "--print-config")
    assert status == 0
    config = json.loads(stdout)
    assert config["hidden_size"] == 24 and config["optimizer"] == "adam"


def test_resume_through_the_cli(cli_run, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cli_run[0], copy)
    status, stdout, stderr = run_cli(capsys, "train", "--resume", copy, "--epochs", "3", "--no-report")
    assert status == 0 and stdout == ""
    assert (copy / "checkpoints" / "model-03.keras").is_file()
    info = json.loads((copy / "config.json").read_text())
    assert info["config"]["epochs"] == 3 and info["resumed"] == [f"lstmlm train --resume {copy} --epochs 3 --no-report"]


def test_real_subprocess(cli_run):
    executable = Path(sys.executable).with_name("lstmlm")
    if not executable.exists():
        pytest.skip("the lstmlm console script is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([str(executable), "evaluate", str(cli_run[0]), "--split", "valid", "--json"],
                               capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["split"] == "valid" and result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert "Traceback" not in completed.stderr
