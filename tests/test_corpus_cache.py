"""The corpus cache: a second load reads it without tokenising, a changed text is a new entry, a damaged entry is
detected and rebuilt, and it can be turned off or moved. Every test uses its own folder under tmp_path."""

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from lstmlm.data import corpus as corpus_module
from lstmlm.config import Config
from lstmlm.data.corpus import load_corpus
from lstmlm.data.corpus_cache import FORMAT, cache_directory
from lstmlm.errors import LstmlmError

FOLDER = f"corpus-v{FORMAT}"
TEXTS = {"train": "the cat sat\nthe dog sat on the mat\n\na cat\n", "valid": "the cat ran\n", "test": "a dog sat\n"}


@pytest.fixture
def corpus_files(tmp_path):
    paths = {}
    for split, text in TEXTS.items():
        paths[split] = tmp_path / f"{split}.txt"
        paths[split].write_text(text, encoding="utf-8")
    return paths


def files_config(paths, **fields):
    return Config(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]), **fields)


def as_lists(corpus):
    return corpus.vocabulary.words, corpus.vocabulary.counts, {s: ids.tolist() for s, ids in corpus.splits.items()}


def load_quietly(config, cache):
    """load_corpus, failing on any warning (a clean cache hit or miss warns about nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_corpus(config, cache=cache)


def test_second_load_is_read_from_the_cache_without_tokenising(corpus_files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_quietly(files_config(corpus_files), cache)
    assert first.cached == {"train": False, "valid": False, "test": False}

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read block by block: the cache was not used")

    monkeypatch.setattr(corpus_module, "TextReader", no_reading)
    monkeypatch.setattr(corpus_module, "block_words", no_reading)
    second = load_quietly(files_config(corpus_files), cache)
    assert second.cached == {"train": True, "valid": True, "test": True}
    assert as_lists(second) == as_lists(first)
    for ids in second.splits.values():
        assert isinstance(ids, np.memmap) and ids.dtype == np.int32
    second["train"][:] = -1  # copy-on-write: the process's copy changes, the cache does not
    assert as_lists(load_quietly(files_config(corpus_files), cache)) == as_lists(first)
    names = sorted(path.name.split("-")[0] + path.suffix for path in (cache / FOLDER).glob("[iv]*"))
    assert names == ["ids.json"] * 3 + ["ids.npy"] * 3 + ["vocabulary.json", "vocabulary.txt"]


def damage_ids(path):  # one id changed, same size
    data = bytearray(path.read_bytes())
    data[-4:] = (int.from_bytes(data[-4:], "little") ^ 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated ids": lambda npy, json_path: npy.write_bytes(npy.read_bytes()[:-4]),
    "truncated header": lambda npy, json_path: npy.write_bytes(npy.read_bytes()[:50]),
    "bytes appended": lambda npy, json_path: npy.write_bytes(npy.read_bytes() + b"\0\0\0\0"),
    "one id changed": lambda npy, json_path: damage_ids(npy),
    "int64 ids": lambda npy, json_path: np.save(npy, np.load(npy).astype(np.int64)),
    "ids deleted": lambda npy, json_path: npy.unlink(),
    "record not JSON": lambda npy, json_path: json_path.write_text("{"),
    "record of another key": lambda npy, json_path: json_path.write_text(
        json.dumps({**json.loads(json_path.read_text()), "key": "0" * 64})),
    "record without CRC": lambda npy, json_path: json_path.write_text(
        json.dumps({k: v for k, v in json.loads(json_path.read_text()).items() if k != "crc32"})),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_id_array_is_detected_and_rebuilt(corpus_files, tmp_path, damage):
    cache = tmp_path / "cache"
    reference = as_lists(load_corpus(files_config(corpus_files), cache=False))
    load_quietly(files_config(corpus_files), cache)
    records = {json.loads(path.read_text())["source"]: path for path in (cache / FOLDER).glob("ids-*.json")}
    json_path = records[str(corpus_files["valid"])]
    DAMAGE[damage](json_path.with_suffix(".npy"), json_path)

    with pytest.warns(UserWarning, match=r"corpus cache entry ids-\w+\.(npy|json) is damaged .*rebuilding it"):
        rebuilt = load_corpus(files_config(corpus_files), cache=cache)
    assert rebuilt.cached == {"train": True, "valid": False, "test": True}
    assert as_lists(rebuilt) == reference
    again = load_quietly(files_config(corpus_files), cache)  # the rebuilt entry is whole again
    assert again.cached == {"train": True, "valid": True, "test": True} and as_lists(again) == reference


@pytest.mark.parametrize("damage", ["count changed", "word changed", "record deleted"])
def test_a_damaged_vocabulary_is_detected_and_rebuilt(corpus_files, tmp_path, damage):
    cache = tmp_path / "cache"
    reference = as_lists(load_quietly(files_config(corpus_files), cache))
    (text_path,) = (cache / FOLDER).glob("vocabulary-*.txt")
    if damage == "record deleted":  # a vocabulary without its record is not used (and is no damage)
        text_path.with_suffix(".json").unlink()
        rebuilt = load_quietly(files_config(corpus_files), cache)
    else:
        old, new = ("the\t3", "the\t4") if damage == "count changed" else ("the\t", "teh\t")
        text = text_path.read_text()
        assert old in text
        text_path.write_text(text.replace(old, new))
        with pytest.warns(UserWarning, match=r"vocabulary-\w+\.txt is damaged"):
            rebuilt = load_corpus(files_config(corpus_files), cache=cache)
    assert rebuilt.cached["train"] is False and as_lists(rebuilt) == reference
    assert load_quietly(files_config(corpus_files), cache).cached["train"] is True


def test_a_changed_text_or_setting_is_a_new_entry(corpus_files, tmp_path):
    cache = tmp_path / "cache"
    load_quietly(files_config(corpus_files), cache)
    corpus_files["valid"].write_text("the mat sat\n", encoding="utf-8")
    changed = load_quietly(files_config(corpus_files), cache)
    assert changed.cached == {"train": True, "valid": False, "test": True}
    assert as_lists(changed) == as_lists(load_corpus(files_config(corpus_files), cache=False))

    corpus_files["train"].write_text(TEXTS["train"] + "a new line\n", encoding="utf-8")  # new vocabulary:
    changed = load_quietly(files_config(corpus_files), cache)  # every split is encoded again
    assert changed.cached == {"train": False, "valid": False, "test": False}
    assert as_lists(changed) == as_lists(load_corpus(files_config(corpus_files), cache=False))

    for fields in ({"lowercase": True}, {"max_vocabulary_size": 3}):
        assert load_quietly(files_config(corpus_files, **fields), cache).cached["train"] is False
        assert load_quietly(files_config(corpus_files, **fields), cache).cached["train"] is True


def test_same_vocabulary_shares_the_id_arrays(corpus_files, tmp_path):
    """The id arrays are keyed by the vocabulary's words: a cap that drops nothing (1000 against the default 0,
    every word) counts train again (another vocabulary key) but reuses valid and test."""
    cache = tmp_path / "cache"
    load_quietly(files_config(corpus_files), cache)
    corpus = load_quietly(files_config(corpus_files, max_vocabulary_size=1000), cache)
    assert corpus.cached == {"train": False, "valid": True, "test": True}
    assert len(list((cache / FOLDER).glob("vocabulary-*.txt"))) == 2
    assert len(list((cache / FOLDER).glob("ids-*.npy"))) == 3


def test_no_cache_leaves_no_files_and_gives_arrays_in_memory(corpus_files, tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LSTMLM_NO_CACHE", "1")
    corpus = load_quietly(files_config(corpus_files), None)
    assert not (tmp_path / "cache").exists()
    assert all(type(ids) is np.ndarray and ids.flags.writeable for ids in corpus.splits.values())
    monkeypatch.setenv("LSTMLM_NO_CACHE", "0")  # 0 / false / no / empty: the cache is on
    assert as_lists(load_quietly(files_config(corpus_files), None)) == as_lists(corpus)
    assert list((tmp_path / "cache" / FOLDER).glob("ids-*.npy"))


def test_cache_directory_from_the_environment():
    home = Path.home()
    assert cache_directory({}) == home / ".cache" / "lstmlm"
    assert cache_directory({"XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/lstmlm")
    assert cache_directory({"XDG_CACHE_HOME": "/x/cache", "LSTMLM_CACHE_DIR": "/y"}) == Path("/y")
    for value in ("1", "yes", "true"):
        assert cache_directory({"LSTMLM_CACHE_DIR": "/y", "LSTMLM_NO_CACHE": value}) is None
    # this suite (conftest) keeps its cache out of the home folder
    assert not cache_directory().resolve().is_relative_to(home.resolve())


def test_an_unwritable_cache_falls_back_to_no_cache(corpus_files, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="the corpus cache .*a-file.* cannot be written"):
        corpus = load_corpus(files_config(corpus_files), cache=tmp_path / "a-file" / "cache")
    assert as_lists(corpus) == as_lists(load_corpus(files_config(corpus_files), cache=False))


def test_temporary_files_of_killed_runs_are_removed(corpus_files, tmp_path):
    folder = tmp_path / "cache" / FOLDER
    folder.mkdir(parents=True)
    old, recent = folder / ".tmp-old.npy", folder / ".tmp-recent.npy"  # recent: maybe another run's, in progress
    old.write_bytes(b"x" * 100)
    recent.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    load_quietly(files_config(corpus_files), tmp_path / "cache")
    assert not old.exists() and recent.exists()


def test_a_full_disk_is_a_one_line_error(corpus_files, tmp_path, monkeypatch):
    from lstmlm.data import id_arrays

    def disk_full(self, ids):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(id_arrays.IdsFile, "append", disk_full)
    with pytest.raises(LstmlmError, match=rf"{FOLDER}: cannot write token ids \(No space left on device\); "):
        load_corpus(files_config(corpus_files), cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
