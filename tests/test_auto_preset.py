"""`--preset auto` (lstmlm/auto_preset.py): its rules on numbers, and end to end through the CLI."""

import json

import pytest

from lstmlm import auto_preset
from lstmlm.cli import main
from lstmlm.presets import PRESETS, preset

PTB_TOKENS, PTB_WORDS = 929_589, 10_000
# training tokens/s by width, about what a 2-core Xeon measured for speedrun-like models (1 and 2 threads)
ONE_THREAD = {128: 16_000, 200: 10_000, 256: 7_100, 384: 4_000, 512: 2_500}
TWO_THREADS = {128: 25_000, 200: 16_000, 256: 11_400, 384: 7_100, 512: 4_300}


def test_ptb_15_minutes_one_thread_is_the_measured_winner():
    """2x256 with light dropout: `speedrun-light`, the best recipe measured for PTB at 15 minutes, 1 thread."""
    choice = auto_preset.choose(PTB_TOKENS, PTB_WORDS, 15, ONE_THREAD)
    assert choice.fields["hidden_size"] == 256 and choice.fields["softmax"] == "full"
    assert {k: choice.fields[k] for k in auto_preset.REGULARISATION["light"]} == {
        k: PRESETS["speedrun-light"][k] for k in auto_preset.REGULARISATION["light"]}
    assert "patience" not in choice.fields  # PTB is not a small corpus
    assert choice.measured["expected_epochs"] == pytest.approx(7_100 * 15 * 60 * 0.9 / PTB_TOKENS, abs=0.01)


def test_ptb_an_hour_at_two_threads_is_wider_and_more_regularised():
    """An hour at 2 threads: 2x384 with `speedrun-wide`'s dropout (it beat 2x256 there)."""
    choice = auto_preset.choose(PTB_TOKENS, PTB_WORDS, 60, TWO_THREADS)
    assert choice.fields["hidden_size"] == 384
    assert {k: choice.fields[k] for k in auto_preset.REGULARISATION["heavy"]} == {
        k: PRESETS["speedrun-wide"][k] for k in auto_preset.REGULARISATION["heavy"]}


def test_a_small_corpus_gets_a_narrow_model_heavy_dropout_and_early_stopping():
    """The 259k-token novel where the 2x256 speedrun overfitted: at most 2x200, heavy dropout, patience."""
    choice = auto_preset.choose(259_000, 6_435, 15, ONE_THREAD)
    assert choice.fields["hidden_size"] == 200  # 16 x 256^2 = 1.05M weights > 3 x 259k tokens
    assert choice.fields["dropout"] == 0.3 and choice.fields["patience"] == 3
    assert any("patience 3" in reason for reason in choice.reasons)


def test_a_large_vocabulary_gets_the_adaptive_softmax():
    assert auto_preset.choose(2_088_628, 33_278, 15, TWO_THREADS).fields["softmax"] == "adaptive"
    assert auto_preset.choose(2_088_628, 20_000, 15, TWO_THREADS).fields["softmax"] == "full"


def test_without_a_budget_the_data_alone_sizes_the_model():
    assert auto_preset.choose(PTB_TOKENS, PTB_WORDS, 0).fields["hidden_size"] == 384
    assert auto_preset.choose(10_000, 500, 0).fields["hidden_size"] == 128  # nothing fits: the narrowest
    with pytest.raises(ValueError, match="speeds"):
        auto_preset.choose(PTB_TOKENS, PTB_WORDS, 15)


def test_a_budget_too_short_for_six_epochs_takes_the_fastest_width():
    choice = auto_preset.choose(PTB_TOKENS, PTB_WORDS, 1, ONE_THREAD)
    assert choice.fields["hidden_size"] == 128 and "no width trains" in choice.reasons[1]
    assert choice.fields["dropout"] == 0.1  # light: far fewer than 8 epochs


def test_auto_leaves_the_named_presets_alone():
    before = {name: dict(values) for name, values in PRESETS.items()}
    auto_preset.choose(PTB_TOKENS, PTB_WORDS, 15, ONE_THREAD)
    assert PRESETS == before and "auto" not in PRESETS
    assert preset("tutorial").hidden_size == 500


def test_cli_auto_measures_chooses_records_and_keeps_explicit_flags(toy_corpus, tmp_path, capsys):
    """End to end: the toy corpus is small (2x128 is all it supports), the speed of that width is measured on this
    machine, the choice and its reasons are printed and written to config.json, and a flag given by the user
    (--dropout) is kept over auto's."""
    out = tmp_path / "auto"
    status = main(["train", "--preset", "auto", "--train", str(toy_corpus["train"]), "--valid",
                   str(toy_corpus["valid"]), "--max-minutes", "0.05", "--dropout", "0.05", "--num-steps", "10",
                   "--batch-size", "4", "--threads", "1", "--out", str(out), "--no-report", "--precision", "float32"])
    err = capsys.readouterr().err
    assert status == 0
    assert "preset auto: softmax full" in err and "kept as given: dropout" in err
    info = json.loads((out / "config.json").read_text())
    auto = info["auto"]
    assert auto["fields"]["hidden_size"] == info["config"]["hidden_size"] == 128
    assert list(auto["measured"]["tokens_per_second"]) == ["128"] and auto["measured"]["tokens_per_second"]["128"] > 0
    assert info["config"]["dropout"] == 0.05 and auto["fields"]["dropout"] != 0.05  # the flag won
    assert info["config"]["patience"] == 3  # a small corpus
    assert info["config"]["learning_rate"] == PRESETS["speedrun"]["learning_rate"]  # the rest is speedrun's


def test_cli_auto_with_several_processes_is_one_line(toy_corpus, tmp_path, capsys):
    status = main(["train", "--preset", "auto", "--train", str(toy_corpus["train"]), "--valid",
                   str(toy_corpus["valid"]), "--processes", "2", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert status != 0 and "--preset auto" in err and "--print-config" in err and len(err.strip().splitlines()) == 1
