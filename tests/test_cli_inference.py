"""The CLI's inference verbs and flags: score, generate --num-samples, --precision, export."""

import json

import numpy as np
import pytest

from lstmlm.cli import main
from lstmlm.inference.language_model import load


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_score_prints_each_word_and_the_total(tiny_run, capsys):
    status, out, err = run_cli(capsys, "score", tiny_run, "--text", "the cat sees zorblax")
    assert status == 0 and "zorblax" in err  # the unknown word is noted on stderr
    lines = out.strip().splitlines()
    expected = load(tiny_run).score("the cat sees zorblax")
    assert [line.split()[1] for line in lines[:-1]] == ["the", "cat", "sees", "<unk>"]
    for line, entry in zip(lines, expected["word_scores"]):
        assert float(line.split()[0]) == pytest.approx(entry["log_probability"], abs=1e-4)
    assert lines[-1] == (f"total log-probability {expected['total_log_probability']:.4f} nats | 4 tokens | "
                         f"perplexity {expected['perplexity']:.2f}")


def test_score_json_is_the_library_result(tiny_run, capsys, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text("my friend likes a fish\nthe dog hears a song\n")
    status, out, _ = run_cli(capsys, "score", tiny_run, "--file", text_file, "--json")
    assert status == 0
    result = json.loads(out)
    expected = load(tiny_run).score(text_file.read_text())
    assert result == json.loads(json.dumps(expected))
    assert result["tokens"] == 10 and result["perplexity"] == pytest.approx(
        np.exp(-result["total_log_probability"] / 10))


def test_score_errors(tiny_run, capsys, tmp_path):
    status, _, err = run_cli(capsys, "score", tiny_run, "--file", tmp_path / "missing.txt")
    assert status == 2 and err.startswith("lstmlm: error: --file") and "Traceback" not in err
    status, _, err = run_cli(capsys, "score", tiny_run, "--text", "   ")
    assert status == 2 and "no words" in err


def test_generate_num_samples(tiny_run, capsys):
    status, out, _ = run_cli(capsys, "generate", tiny_run, "--prompt", "the dog", "--num-words", 6,
                             "--seed", 4, "--num-samples", 3, "--json")
    assert status == 0
    result = json.loads(out)
    assert [s["seed"] for s in result["samples"]] == [4, 5, 6]
    for sample in result["samples"]:
        status, out, _ = run_cli(capsys, "generate", tiny_run, "--prompt", "the dog", "--num-words", 6,
                                 "--seed", sample["seed"], "--json")
        assert json.loads(out)["words"] == sample["words"]
    status, out, _ = run_cli(capsys, "generate", tiny_run, "--prompt", "the dog", "--num-words", 6, "--seed", 4,
                             "--num-samples", 2)
    assert out.splitlines()[0] == "--- sample 1 (seed 4) ---" and "--- sample 2 (seed 5) ---" in out


@pytest.mark.parametrize("verb", [["predict", "--text", "the cat"], ["generate", "--num-words", "3"],
                                  ["evaluate", "--split", "valid"], ["score", "--text", "the cat"]])
def test_precision_flag(tiny_run, capsys, verb):
    outputs = {}
    for precision in ("float32", "int8"):
        status, out, err = run_cli(capsys, verb[0], tiny_run, *verb[1:], "--precision", precision, "--json")
        assert status == 0, err
        outputs[precision] = json.loads(out)
    assert outputs["float32"].keys() == outputs["int8"].keys()
    with pytest.raises(SystemExit) as exit_info:
        main([verb[0], str(tiny_run), *verb[1:], "--precision", "fp8"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


def test_export_verb(tiny_run, capsys, tmp_path):
    pytest.importorskip("onnxscript")
    status, _, err = run_cli(capsys, "export", tiny_run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["export.json", "model.onnx", "vocab.txt"]


def test_epoch_loads_that_epochs_checkpoint_for_evaluate_and_predict(tiny_run, capsys):
    """The tutorial's test mode loads model-40, not the best model: `--epoch N` loads checkpoints/model-NN.keras.
    Each epoch's evaluation equals that checkpoint's own numbers, and a missing epoch is a one-line error."""
    import csv

    history = list(csv.DictReader((tiny_run / "history.csv").open()))
    results = {}
    for epoch in (1, 3):
        status, out, _ = run_cli(capsys, "evaluate", tiny_run, "--split", "valid", "--epoch", epoch, "--json")
        assert status == 0
        results[epoch] = json.loads(out)
        # training's validation of that epoch is the same exact evaluation of the same weights
        assert results[epoch]["loss"] == pytest.approx(float(history[epoch - 1]["valid_loss"]), abs=2e-4)
    assert results[1]["loss"] != pytest.approx(results[3]["loss"], abs=1e-3)
    status, out, _ = run_cli(capsys, "predict", tiny_run, "--split", "test", "--skip", 0, "--epoch", 1, "--json")
    assert status == 0
    from lstmlm.data.corpus import read_split

    model = load(tiny_run, epoch=1)
    ids, _ = read_split(model.config, "test", model.vocabulary)
    assert json.loads(out)["predicted"] == model.actual_vs_predicted(ids, 0, 10)["predicted"]
    status, _, err = run_cli(capsys, "evaluate", tiny_run, "--epoch", 7)
    assert status != 0 and "--epoch 7" in err and "model-07.keras" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli(capsys, "predict", tiny_run, "--split", "test", "--epoch", 0)
    assert status != 0 and "--epoch 0" in err and len(err.strip().splitlines()) == 1
