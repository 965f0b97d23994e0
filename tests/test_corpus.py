"""Corpus loading: the bundled PTB exactly as the tutorial reads it, sha256 checks, files on disk."""

import collections
import gzip
from importlib import resources

import numpy as np
import pytest

from lstmlm import corpus as corpus_module
from lstmlm.config import Config
from lstmlm.corpus import load_corpus
from lstmlm.errors import LstmlmError
from lstmlm.tokenizer import EOS, UNK, read_words, words_of_text


def tutorial_read_words(text):
    """The tutorial's read_words: newline -> <eos>, then split."""
    return text.replace("\n", "<eos>").split()


def tutorial_build_vocab(words):
    counter = collections.Counter(words)
    count_pairs = sorted(counter.items(), key=lambda x: (-x[1], x[0]))
    words, _ = list(zip(*count_pairs))
    return dict(zip(words, range(len(words))))


@pytest.fixture(scope="module")
def ptb():
    return load_corpus(Config())


def raw_ptb(split):
    return gzip.decompress((resources.files("lstmlm") / "data" / "ptb" / f"ptb.{split}.txt.gz").read_bytes()) \
        .decode("utf-8")


def test_ptb_token_counts(ptb):
    assert {split: len(ids) for split, ids in ptb.splits.items()} == {
        "train": 929_589, "valid": 73_760, "test": 82_430}
    assert len(ptb.vocabulary) == 10_000
    assert all(ids.dtype == np.int32 for ids in ptb.splits.values())


def test_ptb_vocabulary_matches_tutorial_build_vocab(ptb):
    train_words = tutorial_read_words(raw_ptb("train"))
    reference = tutorial_build_vocab(train_words)
    assert len(reference) == 10_000
    assert ptb.vocabulary.index == reference  # all 10,000 words, same ids
    assert ptb.vocabulary.words[:3] == ["the", UNK, EOS]
    # and the encoded splits are the tutorial's file_to_word_ids
    assert ptb["train"].tolist() == [reference[word] for word in train_words]
    valid_words = tutorial_read_words(raw_ptb("valid"))
    assert ptb["valid"].tolist() == [reference[word] for word in valid_words if word in reference]
    assert len(valid_words) == 73_760


def test_sha256_rejects_corrupted_data(monkeypatch):
    monkeypatch.setitem(corpus_module.PTB_SHA256, "valid", "0" * 64)
    with pytest.raises(LstmlmError, match="sha256 .* does not match the published 0000"):
        load_corpus(Config())
    with pytest.raises(LstmlmError, match="ptb.valid.txt.gz"):
        corpus_module.bundled_text("ptb", "valid")
    corpus_module.bundled_text("ptb", "test")  # the others still verify


def test_unknown_bundled_corpus():
    with pytest.raises(LstmlmError, match="unknown bundled corpus 'wiki'"):
        corpus_module.bundled_text("wiki", "train")


def test_read_words_adds_eos_per_line_including_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("the cat\n\n  sat  on\tthe mat\n", encoding="utf-8")
    assert read_words(path) == ["the", "cat", EOS, EOS, "sat", "on", "the", "mat", EOS]
    # (the tutorial's bare replace("\n", "<eos>") only splits correctly because PTB lines are space-padded)
    assert read_words(path) == tutorial_read_words(path.read_text().replace("\n", " \n "))
    path.write_text("The Cat\nsat", encoding="utf-8")  # no final newline: no final <eos>
    assert read_words(path, lowercase=True) == ["the", "cat", EOS, "sat"]


def test_read_words_errors(tmp_path):
    with pytest.raises(LstmlmError, match="missing.txt: no such file"):
        read_words(tmp_path / "missing.txt")
    with pytest.raises(LstmlmError, match="is a directory"):
        read_words(tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n\n", encoding="utf-8")
    with pytest.raises(LstmlmError, match="blank.txt: contains no words"):
        read_words(blank)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("first line\nsecond line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(LstmlmError, match=r"latin1.txt: line 3: bytes that are not UTF-8"):
        read_words(binary)
    with pytest.raises(LstmlmError, match="no words"):
        words_of_text("")


def test_files_corpus_vocabulary_from_train_only(tmp_path):
    paths = {}
    for split, text in {"train": "a b a c\nb a\n", "valid": "a z b\n", "test": "c c y\n"}.items():
        paths[split] = tmp_path / f"{split}.txt"
        paths[split].write_text(text, encoding="utf-8")
    corpus = load_corpus(Config(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"])))
    vocabulary = corpus.vocabulary
    assert vocabulary.words == ["a", "<eos>", "b", "c", UNK]  # a 3, <eos> 2, b 2, c 1
    assert corpus["valid"].tolist() == vocabulary.encode(["a", UNK, "b", EOS])
    assert corpus["test"].tolist() == [3, 3, vocabulary.unk_id, 1]
    assert corpus.sources["train"] == str(paths["train"])


def test_max_vocab_applies_to_files(tmp_path):
    (tmp_path / "t.txt").write_text("a a a b b c\n", encoding="utf-8")
    corpus = load_corpus(Config(train=str(tmp_path / "t.txt"), valid=str(tmp_path / "t.txt"), max_vocabulary_size=3))
    # c and <eos> (1 each) fold into <unk> (count 2), which sorts before b (2) by word
    assert corpus.vocabulary.words == ["a", UNK, "b"]
    assert corpus.vocabulary.counts == [3, 2, 2]
    assert corpus["train"].tolist() == [0, 0, 0, 2, 2, 1, 1]
