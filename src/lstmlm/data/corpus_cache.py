"""The corpus cache: vocabularies and encoded id arrays, so the next run on the same corpus starts without
tokenising it again.

Where it lives: `$LSTMLM_CACHE_DIR`, else `$XDG_CACHE_HOME/lstmlm`, else `~/.cache/lstmlm`; the entries are in
its `corpus-vN/` folder (N = `FORMAT`). `LSTMLM_NO_CACHE=1` turns it off: the ids are then built in a temporary folder and
read into memory. A folder that cannot be written is skipped the same way, with a warning.

What is in it, and how an entry is invalidated (an entry's name is the sha256 of its key, so a changed input
simply names another entry):
- `vocabulary-KEY.txt` (vocab.txt format) and `.json`: the vocabulary counted from a training text. Key: the
  text's sha256, `lowercase`, the maximum size (0 = every word) and the cache format.
- `tokenizer-KEY.txt` and `.json`: a char or bpe tokenizer learned from a training text (its run-directory file).
  Key: the text's sha256, the kind, `lowercase`, the size asked for and the cache format.
- `ids-KEY.npy` (int32, memory-mapped copy-on-write when used) and `.json`: one text encoded with one vocabulary.
  Key: the text's sha256, the vocabulary's sha256 (its words in id order), `lowercase` and the cache format; for
  the char, byte and bpe tokenizers also the tokenizer's sha256 (data/tokenizers.py: its kind and file).
  The `.json` holds the length, the CRC-32 of the ids and the count of words read as `<unk>`.
Every text file is hashed on every load (the bundled PTB is keyed by its published sha256 and checked whenever
it is read). An entry whose file is missing, truncated, of another dtype or shape, or whose CRC-32 or recorded
key does not match is rebuilt (with a warning). Files are written under a temporary name and renamed into
place, so a crash or a concurrent run never leaves a half-written entry under a real name.

It is safe to delete the whole folder (or any file in it) at any time when no run is loading a corpus: it only
costs the next run the time to tokenise again.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from lstmlm.errors import LstmlmError
from lstmlm.data.id_arrays import IdsFile, open_ids, read_ids
from lstmlm.data.vocabulary import Vocabulary

# Bump FORMAT whenever the words of a text, the vocabulary built from counts (Vocabulary.from_counts) or the
# files change: every older entry is then ignored. 2: a size cap counts <unk> (a corpus of exactly max_size types
# without <unk> is cut too), so vocabularies cached by format 1 may differ from what is built now.
FORMAT = 2
STALE_TEMPORARY_SECONDS = 24 * 3600  # temporary files older than this were left by a killed run


def cache_directory(environ=None):
    """The cache folder from the environment, or None when LSTMLM_NO_CACHE is set (to anything but 0/false/no)."""
    environ = os.environ if environ is None else environ
    if environ.get("LSTMLM_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no"):
        return None
    if environ.get("LSTMLM_CACHE_DIR"):
        return Path(environ["LSTMLM_CACHE_DIR"]).expanduser()
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]).expanduser() / "lstmlm"
    return Path.home() / ".cache" / "lstmlm"


def _key(**fields):
    return hashlib.sha256(json.dumps({"format": FORMAT, **fields}, sort_keys=True).encode()).hexdigest()


def vocabulary_key(train_sha256, lowercase, max_size):
    return _key(kind="vocabulary", train_sha256=train_sha256, lowercase=bool(lowercase),
                max_vocabulary_size=int(max_size or 0))


def ids_key(text_sha256, vocabulary, lowercase, tokenizer_sha256=None):
    """The key of a text's ids; `tokenizer_sha256`: a char/byte/bpe tokenizer's (None: words, the key as before)."""
    extra = {} if tokenizer_sha256 is None else {"tokenizer_sha256": tokenizer_sha256}
    return _key(kind="ids", text_sha256=text_sha256, vocabulary_sha256=vocabulary.sha256(),
                lowercase=bool(lowercase), **extra)


def tokenizer_key(train_sha256, kind, lowercase, size):
    return _key(kind="tokenizer", tokenizer=kind, train_sha256=train_sha256, lowercase=bool(lowercase),
                size=int(size or 0))


class CorpusCache:
    """Cache entries in a folder (`persistent`), or a scratch folder deleted on close (nothing is reused).

    Use `open_cache()`, as a context manager.
    """

    def __init__(self, directory, persistent=True):
        self.directory, self.persistent = Path(directory), persistent
        if persistent:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write(self.directory / ".writable", b"")  # fail here, not halfway through a corpus
            self._remove_stale_temporaries()

    # ---- vocabularies -----------------------------------------------------------------------------------
    def load_vocabulary(self, key):
        """The cached vocabulary for `key`, or None (missing or damaged)."""
        if not self.persistent:
            return None
        path = self.directory / f"vocabulary-{key}.txt"
        try:
            recorded = self._recorded(path, key)
            if recorded is None:
                return None
            data, info = recorded
            # words never contain whitespace (they come from str.split), so one split parses every line
            fields = data.decode("utf-8").split()
            if len(fields) != 2 * int(info["words"]):
                raise LstmlmError("its length differs from the recorded one")
            vocabulary = Vocabulary(fields[0::2], map(int, fields[1::2]))
        except (OSError, ValueError, LstmlmError, KeyError) as error:
            return self._damaged(path, error)
        return vocabulary

    def save_vocabulary(self, key, vocabulary):
        if not self.persistent:
            return
        path = self.directory / f"vocabulary-{key}.txt"
        data = "".join(f"{w}\t{c}\n" for w, c in zip(vocabulary.words, vocabulary.counts)).encode("utf-8")
        self._write(path, data)
        self._write_info(path.with_suffix(".json"), {"key": key, "words": len(vocabulary),
                                                     "sha256": hashlib.sha256(data).hexdigest()})

    # ---- learned tokenizers -----------------------------------------------------------------------------
    def load_tokenizer_text(self, key):
        """The text of the tokenizer file cached for `key`, or None (missing or damaged)."""
        if not self.persistent:
            return None
        path = self.directory / f"tokenizer-{key}.txt"
        try:
            recorded = self._recorded(path, key)
            return None if recorded is None else recorded[0].decode("utf-8")
        except (OSError, ValueError, LstmlmError, KeyError) as error:
            return self._damaged(path, error)

    def _recorded(self, path, key):
        """(bytes, record) of a cached file whose .json records `key`, the bytes checked against the recorded
        sha256; None if nothing is cached for `key`. A damaged file raises (OSError, ValueError, LstmlmError)."""
        info = self._info(path.with_suffix(".json"), key)
        if info is None:
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise LstmlmError("its sha256 differs from the recorded one")
        return data, info

    def save_tokenizer_text(self, key, text):
        if not self.persistent:
            return
        path, data = self.directory / f"tokenizer-{key}.txt", text.encode("utf-8")
        self._write(path, data)
        self._write_info(path.with_suffix(".json"), {"key": key, "sha256": hashlib.sha256(data).hexdigest()})

    # ---- id arrays --------------------------------------------------------------------------------------
    def load_ids(self, key):
        """(ids memory-mapped, number of words read as <unk>) for `key`, or None (missing or damaged)."""
        if not self.persistent:
            return None
        path = self.directory / f"ids-{key}.npy"
        info = self._info(path.with_suffix(".json"), key)
        if info is None:
            return None
        try:
            ids = open_ids(path, int(info["tokens"]), int(info["crc32"]))
            num_unknown = int(info["num_unknown_words"])
        except (KeyError, TypeError, ValueError) as error:
            return self._damaged(path, error)
        if ids is None:
            return self._damaged(path, "missing, truncated, or its ids differ from the recorded CRC-32")
        return ids, num_unknown

    def new_ids(self):
        """An IdsFile under a temporary name in the cache folder (a context manager; see `save_ids`)."""
        handle, name = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=self.directory)
        os.close(handle)
        return IdsFile(name)

    def save_ids(self, key, ids_file, num_unknown, **info):
        """Finish `ids_file` and keep it under `key`; returns the ids (memory-mapped, or in memory when the
        cache is not persistent)."""
        ids_file.finish()
        if not self.persistent:
            return read_ids(ids_file.path)
        path = self.directory / f"ids-{key}.npy"
        os.replace(ids_file.path, path)
        self._write_info(path.with_suffix(".json"), {"key": key, "tokens": ids_file.tokens, "dtype": "int32",
                                                     "crc32": ids_file.crc32, "num_unknown_words": num_unknown,
                                                     **info})
        ids = open_ids(path, ids_file.tokens, ids_file.crc32)
        if ids is None:  # replaced meanwhile by a concurrent run with different bytes: cannot happen for one key
            raise LstmlmError(f"{path}: the corpus cache entry changed while it was being written; run again")
        return ids

    # ---- files ------------------------------------------------------------------------------------------
    def _info(self, path, key):
        """The JSON record of an entry if it exists and belongs to `key`; None if missing (or damaged)."""
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            return self._damaged(path, error)
        if not isinstance(info, dict) or info.get("key") != key or info.get("format") != FORMAT:
            return self._damaged(path, "its recorded key differs")
        return info

    def _damaged(self, path, why):
        warnings.warn(f"lstmlm: corpus cache entry {path.name} is damaged ({why}); rebuilding it", stacklevel=3)
        return None

    def _write_info(self, path, info):
        self._write(path, (json.dumps({"format": FORMAT, **info}, indent=1) + "\n").encode("utf-8"))

    def _write(self, path, data):
        handle, name = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(name, path)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def _remove_stale_temporaries(self):
        now = time.time()
        for path in self.directory.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                    path.unlink()


@contextlib.contextmanager
def open_cache(cache=None):
    """The CorpusCache to use: `cache` None = from the environment (see `cache_directory`), False = none (a
    scratch folder), a path = that folder. A folder that cannot be written falls back to none, with a warning.
    """
    directory = cache_directory() if cache is None else (None if cache is False else Path(cache))
    store = None
    if directory is not None:
        try:
            store = CorpusCache(directory / f"corpus-v{FORMAT}")
        except OSError as error:
            warnings.warn(f"lstmlm: the corpus cache {directory} cannot be written ({error.strerror or error}); "
                          "loading without it", stacklevel=3)
    if store is not None:
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="lstmlm-corpus-") as scratch:
        yield CorpusCache(scratch, persistent=False)
