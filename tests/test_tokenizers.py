"""Tokenizers (issue 18): word, char, byte and bpe end to end on tiny text made here, exact decoding, the numbers
that compare across tokenizers, and bad input as one line."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_config, write_corpus

from lstmlm.cli import main
from lstmlm.data.tokenizers import BpeTokenizer, ByteTokenizer, CharTokenizer
from lstmlm.errors import LstmlmError

# Raw text as a new user has it: punctuation on words, capitals, accents, an emoji, a blank line.
RAW = ['"Well," she said. The café is open.', "Naïve cats sit; the dog runs!", "", "It costs 5€ 🐈 today.",
       "The cat sees the ball, and the dog likes a fish."]


def raw_corpus(directory):
    """Toy sentences mixed with raw text lines, as train/valid/test files."""
    paths = write_corpus(directory, train_sentences=120, other_sentences=12)
    for split, path in paths.items():
        path.write_text(path.read_text(encoding="utf-8") + "\n".join(RAW) + "\n", encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return raw_corpus(tmp_path_factory.mktemp("raw"))


def train_run(paths, out, kind, **overrides):
    from lstmlm.training.loop import train

    extra = {"vocabulary_size": 300} if kind == "bpe" else {}
    config = tiny_config(paths, epochs=1, hidden_size=12, num_layers=1, tokenizer=kind, **extra, **overrides)
    train(config, out=out, log=lambda line: None, command=["lstmlm", "train"], progress=False)
    return out


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """One trained run per tokenizer (shared, read-only)."""
    folder = tmp_path_factory.mktemp("runs")
    return {kind: train_run(corpus, folder / kind, kind) for kind in ("word", "char", "byte", "bpe")}


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---- exact decoding --------------------------------------------------------------------------------------------
_BPE = {}


def small_bpe():
    if "tokenizer" not in _BPE:
        _BPE["tokenizer"] = BpeTokenizer.train(RAW * 3, vocabulary_size=300)
    return _BPE["tokenizer"]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_byte_and_bpe_decode_exactly_what_they_encode(text):
    for tokenizer in (ByteTokenizer(), small_bpe()):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids.tolist()) == text
        assert ids.dtype == np.int32 and (ids >= 0).all() and (ids < len(tokenizer.vocabulary)).all()
        assert int(np.count_nonzero(ids == tokenizer.eos_id)) == text.count("\n")


def test_bpe_keeps_all_256_bytes_and_a_literal_eos_stays_text():
    tokenizer = small_bpe()
    assert len(tokenizer.vocabulary) <= 300 and tokenizer.eos_id == len(tokenizer.vocabulary) - 1
    assert {tokenizer.token_bytes(i) for i in range(256)} >= {bytes([b]) for b in range(256)}
    ids = tokenizer.encode("a <eos> b").tolist()
    assert tokenizer.eos_id not in ids and tokenizer.decode(ids) == "a <eos> b"


def test_char_counts_unseen_characters_as_unknown():
    counts = {}
    CharTokenizer.count("ab\nba\n", counts)
    tokenizer = CharTokenizer.from_counts(counts)
    ids, unknown = tokenizer.encode_counting("abz\nzz")
    assert unknown == 3 and tokenizer.unknown("abz\nzz") == ["z"]
    assert tokenizer.decode(tokenizer.encode("ab\nb").tolist()) == "ab\nb"


def test_saved_tokenizers_load_the_same(tmp_path):
    from lstmlm.config import Config
    from lstmlm.data.tokenizers import load_tokenizer

    counts = {}
    CharTokenizer.count("\n".join(RAW), counts)
    for tokenizer in (CharTokenizer.from_counts(counts), ByteTokenizer(), small_bpe()):
        tokenizer.save(tmp_path)
        loaded = load_tokenizer(tmp_path, Config(tokenizer=tokenizer.kind))
        text = "\n".join(RAW)
        assert loaded.sha256() == tokenizer.sha256()
        assert loaded.encode(text).tolist() == tokenizer.encode(text).tolist()


# ---- end to end, one run per tokenizer ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_every_command_works_on_a_run_of_each_tokenizer(kind, runs, capsys, tmp_path):
    run = runs[kind]
    file = {"char": "characters.json", "byte": "bytes.json", "bpe": "tokenizer.json"}[kind]
    assert (run / file).is_file() and not (run / "vocab.txt").exists()
    status, out, _ = run_cli(capsys, "evaluate", run, "--json")
    result = json.loads(out)
    assert status == 0 and result["num_unknown_words"] == 0
    total = result["loss"] * result["tokens"]
    assert result["bits_per_character"] == pytest.approx(total / math.log(2) / result["characters"])
    assert result["word_perplexity"] == pytest.approx(math.exp(total / result["words"]))
    status, out, _ = run_cli(capsys, "predict", run, "--text", "The cat", "--top-k", "3", "--json")
    assert status == 0 and len(json.loads(out)["predictions"]) == 3
    status, out, _ = run_cli(capsys, "predict", run, "--text", "The cat ", "--whole-words", "--json")
    words = [entry["word"] for entry in json.loads(out)["predictions"]]
    assert status == 0 and words and all(word == "<eos>" or not any(c.isspace() for c in word) for word in words)
    status, out, _ = run_cli(capsys, "generate", run, "--prompt", "The café", "--num-words", "12", "--seed", "3",
                             "--json")
    generated = json.loads(out)
    assert status == 0 and len(generated["words"]) == 12 and isinstance(generated["text"], str)
    status, out, _ = run_cli(capsys, "score", run, "--text", "The cat sees a fish.", "--json")
    scored = json.loads(out)
    assert status == 0 and [s["word"] for s in scored["word_scores"]] == ["The", "cat", "sees", "a", "fish."]
    assert sum(s["log_probability"] for s in scored["word_scores"]) == pytest.approx(scored["total_log_probability"])
    status, out, _ = run_cli(capsys, "inspect", run, "--text", "The cat", "--json")
    positions = json.loads(out)["positions"]
    assert status == 0 and positions[0]["word"] == "<eos>" and "".join(p["word"] for p in positions[1:]) == "The cat"
    history = list(csv.DictReader(open(run / "history.csv", encoding="utf-8")))
    assert float(history[0]["valid_bits_per_character"]) > 0 and float(history[0]["valid_word_perplexity"]) > 1


def test_word_runs_are_as_before_and_their_word_perplexity_is_their_perplexity(runs, capsys, tiny_run):
    run = runs["word"]
    assert (run / "vocab.txt").is_file() and not (run / "tokenizer.json").exists()
    status, out, _ = run_cli(capsys, "evaluate", run, "--json")
    result = json.loads(out)
    assert status == 0 and result["word_perplexity"] == result["perplexity"] and result["words"] == result["tokens"]
    # a run directory from before tokenizers (no "tokenizer" in config.json) loads as word
    from lstmlm.inference.language_model import load

    old = run.parent / "old-word"
    shutil.copytree(run, old)
    info = json.loads((old / "config.json").read_text())
    del info["config"]["tokenizer"], info["config"]["vocabulary_size"]
    (old / "config.json").write_text(json.dumps(info))
    assert load(old).tokenizer.kind == "word"


def test_the_corpus_cache_keeps_each_tokenizers_ids_apart(corpus):
    from lstmlm.data.corpus import load_corpus

    lengths = {kind: len(load_corpus(tiny_config(corpus, tokenizer=kind))["valid"]) for kind in ("word", "byte")}
    assert lengths["byte"] > lengths["word"]
    again = load_corpus(tiny_config(corpus, tokenizer="byte"))
    assert again.cached["valid"] and len(again["valid"]) == lengths["byte"]


@pytest.mark.slow
def test_export_ships_the_tokenizer_beside_model_onnx(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tokenizers import Tokenizer

    from lstmlm.inference.export import export_onnx
    from lstmlm.inference.language_model import load

    model = load(runs["bpe"], precision="float32")
    out = export_onnx(model, tmp_path / "bpe")
    info = json.loads((out / "export.json").read_text())
    assert info["tokenizer"] == "bpe" and info["vocabulary"] == "tokenizer.json"
    outside = Tokenizer.from_file(str(out / "tokenizer.json"))  # no lstmlm: the library alone
    assert outside.encode("The cat sees a fish.").ids == model.tokenizer.encode("The cat sees a fish.").tolist()
    assert info["eos_id"] == outside.get_vocab_size() == model.eos_id


def test_the_server_completes_on_a_bpe_run(runs):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from helpers import serving

    from lstmlm.inference.language_model import load
    from lstmlm.serving.server import create_app

    model = load(runs["bpe"])
    with serving(create_app(model)) as base:
        answer = httpx.post(base + "/v1/completions", json={"model": "bpe", "prompt": "The cat", "max_tokens": 6,
                                                            "seed": 2}, timeout=30).json()
        expected = model.generate("The cat", 6, seed=2)
        assert answer["choices"][0]["text"].replace("\ufffd", "") == expected["text"].replace("\ufffd", "")
        assert answer["usage"]["completion_tokens"] == 6
        words = httpx.post(base + "/v1/next", json={"text": "The cat ", "whole_words": True}, timeout=30).json()
        assert words["predictions"] and all(" " not in entry["word"] for entry in words["predictions"])


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_a_damaged_or_missing_tokenizer_file_is_one_line(runs, capsys, tmp_path):
    run = tmp_path / "bpe"
    shutil.copytree(runs["bpe"], run)
    (run / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ', encoding="utf-8")
    status, _, err = run_cli(capsys, "predict", run, "--text", "the")
    assert status == 2 and err.count("\n") == 1 and "tokenizer.json: damaged tokenizer file" in err
    (run / "tokenizer.json").write_bytes(b"\xff\xfe")
    status, _, err = run_cli(capsys, "generate", run)
    assert status == 2 and "tokenizer.json: damaged tokenizer file (not UTF-8" in err
    (run / "tokenizer.json").unlink()
    status, _, err = run_cli(capsys, "evaluate", run)
    assert status == 2 and "incomplete run directory, missing tokenizer.json" in err and "Traceback" not in err


def test_bad_tokenizer_flags_are_one_line(runs, corpus, capsys, tmp_path):
    with pytest.raises(LstmlmError, match=r"^vocabulary_size 100: smaller than the byte alphabet"):  # the library
        BpeTokenizer.train(RAW, vocabulary_size=100)
    status, _, err = run_cli(capsys, "train", "--tokenizer", "bpe", "--vocabulary-size", "100", "--out",
                             tmp_path / "x", "--train", corpus["train"], "--valid", corpus["valid"])
    assert status == 2 and "--vocabulary-size 100: smaller than the byte alphabet" in err
    status, _, err = run_cli(capsys, "train", "--vocabulary-size", "500", "--out", tmp_path / "y")
    assert status == 2 and "only --tokenizer bpe" in err
    status, _, err = run_cli(capsys, "train", "--resume", runs["word"], "--tokenizer", "bpe")
    assert status == 2 and "--tokenizer bpe: --resume" in err and "is a word run" in err


def test_characters_unseen_in_training_are_unk_and_reported(runs, capsys):
    status, _, err = run_cli(capsys, "predict", runs["char"], "--text", "the Ж cat")
    assert status == 0 and "read as <unk>: Ж" in err
    from lstmlm.inference.language_model import load

    assert load(runs["byte"]).predict_next("the Ж cat")["unknown_words"] == []
