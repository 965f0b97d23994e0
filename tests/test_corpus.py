"""Corpus loading: the bundled PTB exactly as the tutorial reads it, sha256 checks, files on disk."""

import collections
import gzip
import json
from importlib import resources

import numpy as np
import pytest

from lstmlm.data import corpus as corpus_module
from lstmlm.data import tokenizer
from lstmlm.config import Config
from lstmlm.data.corpus import encode_file, load_corpus, read_split
from lstmlm.errors import LstmlmError
from lstmlm.data.tokenizer import EOS, UNK, read_words, words_of_text
from lstmlm.data.vocabulary import Vocabulary


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


def test_ptb_char_is_ptb_without_the_spaces_around_each_line():
    """PTB-char's text: PTB's lines, each without its leading and trailing space, checked against its own
    sha256; its sizes are the PTB-char benchmark's (5.01M / 393k / 442k characters, newlines included)."""
    sizes = {"train": 5_017_482, "valid": 393_042, "test": 442_423}
    for split, size in sizes.items():
        words, characters = corpus_module.bundled_text("ptb", split), corpus_module.bundled_text("ptb-char", split)
        assert len(characters) == size
        assert characters.split("\n") == [line.strip(" ") for line in words.split("\n")]
    assert len(set(corpus_module.bundled_text("ptb-char", "train"))) == 50  # 49 characters and the newline


def test_ptb_char_with_the_char_tokenizer_has_51_symbols():
    corpus = corpus_module.load_corpus(Config(data="ptb-char", tokenizer="char"), cache=False)
    assert {split: len(ids) for split, ids in corpus.splits.items()} == {
        "train": 5_017_482, "valid": 393_042, "test": 442_423}  # one id per character, a newline as <eos>
    assert len(corpus.vocabulary) == 51  # the 49 characters, <eos> and <unk>
    assert corpus.tokenizer.decode(corpus["valid"][:12]) == "consumers ma"


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


# ---- the streamed loader against a straightforward reference ----------------------------------------------

def reference_corpus(texts, lowercase=False, max_size=None):
    """The loader before streaming, written plainly: the whole text, newlines -> <eos>, split, count, encode.

    Without a cap the vocabulary is the tutorial's build_vocab order plus <unk> (count 0) when absent; with a
    cap it is what the old loader called, Vocabulary.build on the list of every training word.
    """
    words = {}
    for split, text in texts.items():
        text = text.lower() if lowercase else text
        words[split] = text.replace("\n", f" {EOS} ").split()
    if max_size:
        vocabulary = Vocabulary.build(words["train"], max_size)
    else:
        ordered = sorted(collections.Counter(words["train"]).items(), key=lambda item: (-item[1], item[0]))
        if UNK not in dict(ordered):
            ordered.append((UNK, 0))
        vocabulary = Vocabulary([w for w, _ in ordered], [c for _, c in ordered])
    index = vocabulary.index
    ids = {split: [index.get(word, index[UNK]) for word in w] for split, w in words.items()}
    return vocabulary, ids


def write_splits(directory, texts):
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, text in texts.items():
        paths[split] = directory / f"{split}.txt"
        paths[split].write_bytes(text.encode("utf-8"))
    return paths


def config_for(paths, **fields):
    config = Config(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths.get("test")) if
                    "test" in paths else None)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


TRICKY = {
    "crlf": "the cat\r\nsat on\r\n\r\nthe mat\r\n",
    "tabs": "the\tcat\t\tsat\n\t\n on the\tmat",
    "unicode": "naïve café ΟΔΟΣ\u00a0σοφός\u2028日本 語\x1cword\x85end\nİstanbul ǅemal ﬁne\u3000x\n",
    "blank lines": "\n\n  a b\n\n\nb c a\n\n",
    "no final newline": "a b c\nd e",
    "literal tokens": "a <unk> b <eos> c\n<unk> <unk>\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY))
@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("block_bytes", [3, 1 << 20])
def test_streamed_loader_equals_reference_on_tricky_text(tmp_path, monkeypatch, name, lowercase, block_bytes):
    monkeypatch.setattr(tokenizer, "BLOCK_BYTES", block_bytes)  # 3: cut inside lines, at every kind of space
    texts = {"train": TRICKY[name] + "a b zz\n", "valid": TRICKY[name][::-1], "test": "a\nunseen " + TRICKY[name]}
    paths = write_splits(tmp_path / "text", texts)
    for max_size in (None, 0, 3):
        config = config_for(paths, lowercase=lowercase, max_vocabulary_size=max_size)
        vocabulary, ids = reference_corpus(texts, lowercase, max_size)
        for cache in (tmp_path / "cache", tmp_path / "cache", False):  # miss, hit, no cache
            corpus = load_corpus(config, cache=cache)
            assert corpus.vocabulary.words == vocabulary.words and corpus.vocabulary.counts == vocabulary.counts
            assert {split: array.tolist() for split, array in corpus.splits.items()} == ids
            assert all(array.dtype == np.int32 for array in corpus.splits.values())


def test_words_do_not_depend_on_where_blocks_are_cut(tmp_path, monkeypatch):
    text = "Ὀδυσσεύς ΟΔΟΣ. word\u2029x ÅSA\r\n  \tz\x0bq\x0cr\n" * 5 + "a" * 40 + "\nend"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    for lowercase in (False, True):
        expected = (text.lower() if lowercase else text).replace("\n", f" {EOS} ").split()
        for block_bytes in (1, 2, 5, 16, 1 << 20):
            monkeypatch.setattr(tokenizer, "BLOCK_BYTES", block_bytes)
            assert read_words(path, lowercase) == expected, block_bytes


def test_ptb_vocab_txt_and_ids_equal_the_reference(ptb, tmp_path):
    texts = {split: raw_ptb(split) for split in ("train", "valid", "test")}
    vocabulary, ids = reference_corpus(texts, max_size=10_000)
    ptb.vocabulary.save(tmp_path / "new.txt")
    vocabulary.save(tmp_path / "reference.txt")
    assert (tmp_path / "new.txt").read_bytes() == (tmp_path / "reference.txt").read_bytes()
    assert {split: len(array) for split, array in ids.items()} == {"train": 929_589, "valid": 73_760,
                                                                     "test": 82_430}
    for split, array in ptb.splits.items():
        assert np.array_equal(array, np.asarray(ids[split], dtype=np.int32)), split


def test_max_vocabulary_size_0_keeps_every_training_word(tmp_path):
    paths = write_splits(tmp_path, {"train": "a a b c d e f\ng\n", "valid": "a h\n"})
    corpus = load_corpus(config_for(paths, max_vocabulary_size=0), cache=False)
    assert corpus.vocabulary.words == [EOS, "a", "b", "c", "d", "e", "f", "g", UNK]  # ("<" sorts before "a")
    assert corpus["valid"].tolist() == [1, corpus.vocabulary.unk_id, 0]
    ptb = load_corpus(Config(max_vocabulary_size=0))
    assert len(ptb.vocabulary) == 10_000  # PTB has exactly 10,000 types (<unk> among them): nothing to fold


def test_load_corpus_errors_are_one_line_and_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer, "BLOCK_BYTES", 8)
    good = {"train": "a b\nc\n", "valid": "a\n", "test": "b\n"}
    paths = write_splits(tmp_path, good)
    (tmp_path / "latin1.txt").write_bytes("first line\nsecond line\ncaf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "blank.txt").write_text(" \n\t\n\n", encoding="utf-8")
    cases = {
        ("valid", tmp_path / "missing.txt"): "missing.txt: no such file$",
        ("test", tmp_path): "is a directory, expected a text file$",
        ("train", tmp_path / "latin1.txt"): r"latin1.txt: line 3: bytes that are not UTF-8 \(at byte 26\)$",
        ("valid", tmp_path / "latin1.txt"): r"latin1.txt: line 3: bytes that are not UTF-8 \(at byte 26\)$",
        ("train", tmp_path / "blank.txt"): "blank.txt: contains no words",
        ("test", tmp_path / "blank.txt"): "blank.txt: contains no words",
    }
    for (split, path), message in cases.items():
        for cache in (tmp_path / "cache", False):
            with pytest.raises(LstmlmError, match=message) as error:
                load_corpus(config_for({**paths, split: path}), cache=cache)
            assert "\n" not in str(error.value)
    entries = [json.loads(path.read_text()) for path in (tmp_path / "cache").rglob("ids-*.json")]
    assert entries and {entry["source"] for entry in entries} <= {str(path) for path in paths.values()}
    assert not list((tmp_path / "cache").rglob(".tmp-*"))  # a failed split leaves no entry and no temporary


def test_a_file_that_changes_while_it_is_read_is_an_error(tmp_path, monkeypatch):
    paths = write_splits(tmp_path, {"train": "a b\n", "valid": "a\n"})
    monkeypatch.setattr(tokenizer.TextSource, "sha256", lambda self: "0" * 64)  # as if hashed before a change
    with pytest.raises(LstmlmError, match="train.txt: the file changed while it was being read"):
        load_corpus(config_for(paths), cache=tmp_path / "cache")


def test_read_split_and_encode_file_count_unknown_words_as_before(tmp_path):
    paths = write_splits(tmp_path, {"train": "a a b <unk>\n", "valid": "a zz <unk> b yy zz\n"})
    config = config_for(paths)
    corpus = load_corpus(config)
    valid_words = read_words(paths["valid"])
    expected = (corpus.vocabulary.encode(valid_words), len(corpus.vocabulary.unknown(valid_words)))
    ids, num_unknown = read_split(config, "valid", corpus.vocabulary)
    assert (ids.tolist(), num_unknown) == expected == ([0, 2, 2, 3, 2, 2, 1], 3)  # a literal <unk> is known
    ids, num_unknown = encode_file(paths["valid"], corpus.vocabulary)
    assert (ids.tolist(), num_unknown) == expected
    with pytest.raises(LstmlmError, match="^split test: this run has no test split"):
        read_split(config, "test", corpus.vocabulary)
    paths["valid"].unlink()
    with pytest.raises(LstmlmError, match="^split valid: the run's corpus is not available here .*no such file"):
        read_split(config, "valid", corpus.vocabulary)
