"""Vocabulary: tutorial id order, <unk> handling, truncation, save/load."""

import collections

import pytest

from lstmlm.errors import LstmlmError
from lstmlm.data.tokenizer import EOS, UNK
from lstmlm.data.vocabulary import Vocabulary

WORDS = "b a b c <eos> a b d <eos> e".split()  # counts: b 3, a 2, <eos> 2, c 1, d 1, e 1


def test_ids_are_ordered_by_descending_count_then_word():
    vocabulary = Vocabulary.build(WORDS)
    assert vocabulary.words == ["b", "<eos>", "a", "c", "d", "e", UNK]
    assert vocabulary.counts == [3, 2, 2, 1, 1, 1, 0]
    reference = sorted(collections.Counter(WORDS).items(), key=lambda item: (-item[1], item[0]))
    assert vocabulary.words[: len(reference)] == [word for word, _ in reference]
    assert [vocabulary.index[word] for word in vocabulary.words] == list(range(len(vocabulary)))


def test_unknown_words_map_to_unk():
    vocabulary = Vocabulary.build(WORDS)
    assert vocabulary.encode(["a", "zebra", "b", "Zebra"]) == [2, vocabulary.unk_id, 0, vocabulary.unk_id]
    assert vocabulary.decode(vocabulary.encode(["zebra"])) == [UNK]
    assert vocabulary.unknown(["a", "zebra", "b", "yak"]) == ["zebra", "yak"]


def test_existing_unk_is_not_duplicated():
    vocabulary = Vocabulary.build("x <unk> x <unk> <unk> y".split())
    assert vocabulary.words == [UNK, "x", "y"]
    assert vocabulary.counts == [3, 2, 1]


def test_max_vocab_folds_rare_words_into_unk():
    vocabulary = Vocabulary.build(WORDS, max_size=4)
    # keep the 3 most frequent (b, <eos>, a); c, d, e (1 each) become <unk> with count 3
    assert len(vocabulary) == 4
    assert vocabulary.words == ["<unk>", "b", "<eos>", "a"]  # (-3, '<unk>') < (-3, 'b')
    assert vocabulary.counts == [3, 3, 2, 2]
    assert sum(vocabulary.counts) == len(WORDS)  # every token is counted exactly once
    assert vocabulary.encode(["c", "d", "e", "a"]) == [vocabulary.unk_id] * 3 + [3]


def test_max_vocab_with_unk_already_frequent_counts_every_token_once():
    words = "<unk> <unk> <unk> a a b c d".split()
    vocabulary = Vocabulary.build(words, max_size=3)
    # kept: <unk> 3, a 2, b 1 (three entries, no second <unk>); c and d fold into <unk>
    assert vocabulary.words == [UNK, "a", "b"]
    assert vocabulary.counts == [5, 2, 1]
    assert sum(vocabulary.counts) == len(words)
    assert vocabulary.encode(["c", "d"]) == [vocabulary.unk_id] * 2


def test_no_truncation_when_vocabulary_fits():
    vocabulary = Vocabulary.build(WORDS, max_size=7)
    assert vocabulary.words == ["b", "<eos>", "a", "c", "d", "e", UNK]


def test_save_load_round_trip(tmp_path):
    vocabulary = Vocabulary.build(WORDS + ["naïve", "日本"], max_size=6)
    path = tmp_path / "vocab.txt"
    vocabulary.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.words == vocabulary.words
    assert loaded.counts == vocabulary.counts
    assert loaded.encode(WORDS) == vocabulary.encode(WORDS)
    assert path.read_text(encoding="utf-8").splitlines()[0] == f"{vocabulary.words[0]}\t{vocabulary.counts[0]}"
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(LstmlmError, match="no such file"):
        Vocabulary.load(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a\t1\nb 2\n", encoding="utf-8")
    with pytest.raises(LstmlmError, match="line 2"):
        Vocabulary.load(bad)
    no_unk = tmp_path / "nounk.txt"
    no_unk.write_text(f"a\t2\n{EOS}\t1\n", encoding="utf-8")
    with pytest.raises(LstmlmError, match="<unk>"):
        Vocabulary.load(no_unk)


def test_max_vocab_counts_unk_when_the_corpus_has_exactly_that_many_types():
    """Found by tests/test_properties.py: 3 types and max_size 3 gave 4 entries (the 3 words and <unk>)."""
    vocabulary = Vocabulary.build("a a b c".split(), max_size=3)
    assert vocabulary.words == ["a", UNK, "b"] and vocabulary.counts == [2, 1, 1]
    assert Vocabulary.build(["a"], max_size=1).words == [UNK]
