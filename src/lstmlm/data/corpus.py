"""Read the three splits of a corpus and turn them into int32 id arrays with a train-only vocabulary.

The text is streamed, so memory grows with the number of distinct words, not with the corpus:
- train: one pass over the text numbers each word in the order it is first seen while counting it (the ids
  go straight to an `.npy` file); the vocabulary is then built from the counts (`Vocabulary.from_counts`: the
  same order as `Vocabulary.build` on the whole word list) and the file's ids are renumbered through a table.
- valid and test: one pass encodes them with that vocabulary.
The arrays are kept in the corpus cache (`lstmlm.data.corpus_cache`: where it lives, how it is invalidated, how to
turn it off) and memory-mapped copy-on-write, so the next run on the same files starts without tokenising.

Other tokenizers (`--tokenizer char|byte|bpe`, data/tokenizers.py) take the same streamed road: the tokenizer is
learned from the training split (counted characters, or BPE trained on its lines; kept in the cache), then every
split is encoded block by block with it; the ids' cache key holds the tokenizer's sha256.

The bundled PTB (Mikolov's simple-examples, as the tutorial uses it) ships gzipped inside the package and is
checked against its published sha256 every time it is read.
"""

import collections
import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from lstmlm.data import tokenizers
from lstmlm.data.corpus_cache import ids_key, open_cache, tokenizer_key, vocabulary_key
from lstmlm.errors import LstmlmError
from lstmlm.data.tokenizer import EOS, UNK, TextReader, TextSource, block_words, no_words_error
from lstmlm.data.vocabulary import Vocabulary

PTB_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
# PTB-char: the same PTB text with each line's leading and trailing space removed (tokenizer.TextSource
# .strip_lines), the sha256 of that text. Its splits hold 5,017,482 / 393,042 / 442,423 characters (newlines
# included): the 5.01M / 393k / 442k of the PTB-char benchmark (Mikolov et al. 2012; awd-lstm-lm's 1.175 bpc),
# whose files spell a word boundary " _ " where this text has one space -- the same symbols, renamed.
PTB_CHAR_SHA256 = {
    "train": "5145926136ee9aef6f359b267ac09cc8a920879cd71725de17c490dd111d2998",
    "valid": "fadf6277290823f881b7bf39b84e88536c87a859cd629dcfd1d2dfdef06097cf",
    "test": "c2f8c16a611595d31da5acdb7a61d50e7d5e95f6b9c05fceda5f5ddc4383e791",
}
BUNDLED = {"ptb": PTB_SHA256, "ptb-char": PTB_CHAR_SHA256}
COUNT_TOKENS = 1 << 22  # first-seen ids gathered before each bincount (16 MB), so counting costs O(types) rarely


@dataclass
class Corpus:
    """Token ids of each split (int32 arrays, memory-mapped when cached) and the train vocabulary."""

    vocabulary: Vocabulary
    splits: dict  # name -> np.ndarray of ids
    sources: dict  # name -> where the text came from
    cached: dict = field(default_factory=dict)  # name -> True when the ids came from the cache
    tokenizer: object = None  # data/tokenizers.py: the run's tokenizer (its vocabulary is `vocabulary`)

    def __getitem__(self, name):
        return self.splits[name]


def bundled_source(name, split):
    if name not in BUNDLED:
        raise LstmlmError(f"data: unknown bundled corpus {name!r} (bundled: {', '.join(BUNDLED)})", argument="data")
    stored = "ptb" if name == "ptb-char" else name  # ptb-char is the ptb files read with stripped lines
    resource = resources.files("lstmlm") / "data" / stored / f"{stored}.{split}.txt.gz"
    return TextSource(resource, name=f"{name}.{split}", published_sha256=BUNDLED[name][split],
                      strip_lines=name == "ptb-char")


def bundled_text(name, split):
    """The text of a bundled corpus split, verified against its sha256."""
    return "".join(TextReader(bundled_source(name, split)))


def split_sources(config, only=None):
    """{split: TextSource} for the configured corpus (all splits, or those in `only`), and {split: description}."""
    if config.train is not None:
        paths = {"train": config.train, "valid": config.valid}
        if config.test is not None:
            paths["test"] = config.test
        paths = {split: path for split, path in paths.items() if only is None or split in only}
        return {split: TextSource(Path(path)) for split, path in paths.items()}, \
            {split: str(path) for split, path in paths.items()}
    splits = [split for split in ("train", "valid", "test") if only is None or split in only]
    return {split: bundled_source(config.data, split) for split in splits}, \
        {split: f"bundled {config.data}.{split}.txt" for split in splits}


def load_corpus(config, cache=None):
    """Build the vocabulary from train and encode every split (from the cache when it has them).

    Args:
        config: a Config (train/valid/test files or the bundled `data`, lowercase, the vocabulary cap).
        cache: None = the corpus cache from the environment; False = no cache; a path = that cache folder.

    Example:
        >>> from lstmlm.config import Config
        >>> corpus = load_corpus(Config(), cache=False)
        >>> len(corpus["train"]), len(corpus.vocabulary)
        (929589, 10000)
    """
    sources, descriptions = split_sources(config)
    splits, cached = {}, {}
    if config.tokenizer != "word":
        with open_cache(cache) as store:
            tokenizer = _learned_tokenizer(config, sources["train"], store)
            for split, source in sources.items():
                splits[split], _, cached[split] = _encoded(source, tokenizer, config.lowercase, store)
        return Corpus(tokenizer.vocabulary, splits, descriptions, cached, tokenizer)
    with open_cache(cache) as store:
        vocabulary, splits["train"], cached["train"] = _train_split(
            sources["train"], config.lowercase, config.max_vocabulary_size or None, store)  # 0: every word
        for split in ("valid", "test"):
            if split in sources:
                splits[split], _, cached[split] = _encoded(sources[split], vocabulary, config.lowercase, store)
    return Corpus(vocabulary, splits, descriptions, cached, tokenizers.WordTokenizer(vocabulary, config.lowercase))


def read_split(config, split, vocabulary, cache=None):
    """One split of a run's corpus encoded with the run's vocabulary or tokenizer (evaluate --split, predict --split).

    Returns:
        (ids, number of words read as <unk>), or raises a one-line LstmlmError.
    """
    try:
        sources, _ = split_sources(config, only=[split])
        if split in sources:
            with open_cache(cache) as store:
                ids, num_unknown, _ = _encoded(sources[split], vocabulary, config.lowercase, store)
    except LstmlmError as error:
        raise LstmlmError(f"split {split}: the run's corpus is not available here ({error}); use --file",
                          argument="split") from None
    if split not in sources:
        raise LstmlmError(f"split {split}: this run has no {split} split (use --file)", argument="split")
    return ids, num_unknown


def text_ids(text, vocabulary=None, max_vocabulary_size=0, lowercase=False, cache=None):
    """(ids, vocabulary) of one text: a file, or a bundled split named like 'ptb.train'. Without a vocabulary
    the text is a training split and its own vocabulary is built (at most `max_vocabulary_size` words, 0 = all).

    Example:
        >>> ids, vocabulary = text_ids("ptb.valid", cache=False)
        >>> len(ids), len(vocabulary)
        (73760, 6022)
    """
    name, _, split = str(text).partition(".")
    if name in BUNDLED and split in BUNDLED[name] and not Path(text).exists():
        source = bundled_source(name, split)
    else:
        source = TextSource(Path(text))
    with open_cache(cache) as store:
        if vocabulary is None:
            vocabulary, ids, _ = _train_split(source, lowercase, max_vocabulary_size or None, store)
        else:
            ids, _, _ = _encoded(source, vocabulary, lowercase, store)
    return ids, vocabulary


def encode_file(path, vocabulary, lowercase=False):
    """(ids, number of words read as <unk>) of any text file (evaluate --file) under a vocabulary or tokenizer;
    streamed, not cached."""
    with open_cache(False) as store:
        ids, num_unknown, _ = _encoded(TextSource(Path(path)), vocabulary, lowercase, store)
    return ids, num_unknown


def split_statistics(config, split):
    """(characters, whitespace words + newlines) of one split of a run's corpus: `text_statistics`."""
    sources, _ = split_sources(config, only=[split])
    return text_statistics(sources[split])


def text_statistics(source):
    """(characters, words) of a text, streamed: its characters with newlines (as written, before --lowercase),
    and its whitespace-separated words with every newline counted as an `<eos>` word: the denominators of bits
    per character and word perplexity, the same for every tokenizer.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_text("the cat\\n\\nsat.\\n", encoding="utf-8")
        >>> text_statistics(path)
        (14, 6)
    """
    source = source if isinstance(source, TextSource) else TextSource(Path(source))
    characters = words = 0
    for block in TextReader(source):
        characters += len(block)
        words += len(block.split()) + block.count("\n")
    return characters, words


def _learned_tokenizer(config, source, store):
    """The char, byte or bpe tokenizer of a training text: from the cache, or learned in one streamed pass."""
    if config.tokenizer == "byte":
        return tokenizers.ByteTokenizer(config.lowercase)
    sha256 = source.sha256()
    size = config.max_vocabulary_size if config.tokenizer == "char" else \
        (config.vocabulary_size or tokenizers.DEFAULT_BPE_SIZE)
    key = tokenizer_key(sha256, config.tokenizer, config.lowercase, size)
    text = store.load_tokenizer_text(key)
    if text is not None:
        try:
            return tokenizers.learned_from_text(config.tokenizer, text, config.lowercase, f"tokenizer-{key}")
        except LstmlmError:
            store._damaged(store.directory / f"tokenizer-{key}.txt", "it does not load")
    if config.tokenizer == "char":
        counts = {}
        for block in TextReader(source, expected_sha256=sha256):
            tokenizers.CharTokenizer.count(block, counts, config.lowercase)
        if not set(counts) - {EOS} - set(" \t\r\x0b\x0c"):
            raise no_words_error(source.label)
        tokenizer = tokenizers.CharTokenizer.from_counts(counts, size or None, config.lowercase)
    else:
        lines = (line for block in TextReader(source, expected_sha256=sha256) for line in block.split("\n"))
        tokenizer = tokenizers.BpeTokenizer.train(lines, size, config.lowercase)
    store.save_tokenizer_text(key, tokenizer.to_text())
    return tokenizer


def _train_split(source, lowercase, max_size, store):
    """(vocabulary, train ids, from the cache?): counted and encoded in one pass unless cached."""
    sha256 = source.sha256()
    key = vocabulary_key(sha256, lowercase, max_size)
    vocabulary = store.load_vocabulary(key)
    if vocabulary is not None:
        ids, _, cached = _encoded(source, vocabulary, lowercase, store, sha256)
        return vocabulary, ids, cached
    with _writing(store) as ids_file:
        first_seen = collections.defaultdict(itertools.count().__next__)  # word -> id in first-seen order
        number = first_seen.__getitem__
        counts, pending = np.zeros(0, dtype=np.int64), []
        for block in TextReader(source, expected_sha256=sha256):
            words = block_words(block, lowercase)
            ids = np.fromiter(map(number, words), dtype=np.int32, count=len(words))
            ids_file.append(ids)
            pending.append(ids)
            if sum(map(len, pending)) >= COUNT_TOKENS:
                counts, pending = _add_counts(counts, pending, len(first_seen)), []
        counts = _add_counts(counts, pending, len(first_seen))
        words = list(first_seen)  # in first-seen id order
        if not any(word != EOS for word in words):
            raise no_words_error(source.label)
        vocabulary = Vocabulary.from_counts(dict(zip(words, counts.tolist())), max_size)
        table = np.fromiter(map(vocabulary.index.get, words, itertools.repeat(vocabulary.unk_id)),
                            dtype=np.int32, count=len(words))
        ids_file.remap(table)
        # words read as <unk>: those folded into it by the size cap (a literal <unk> is a known word)
        num_unknown = int(counts[table == vocabulary.unk_id].sum())
        if first_seen.get(UNK) is not None:
            num_unknown -= int(counts[first_seen[UNK]])
        store.save_vocabulary(key, vocabulary)
        ids = store.save_ids(ids_key(sha256, vocabulary, lowercase), ids_file, num_unknown, source=source.label,
                             text_sha256=sha256, vocabulary_sha256=vocabulary.sha256(), lowercase=bool(lowercase))
    return vocabulary, ids, False


def _add_counts(counts, pending, num_types):
    if len(counts) < num_types:
        counts = np.concatenate([counts, np.zeros(num_types - len(counts), dtype=np.int64)])
    if pending:
        counts += np.bincount(np.concatenate(pending), minlength=num_types)
    return counts


def _encoded(source, vocabulary, lowercase, store, sha256=None):
    """(ids, number of words read as <unk>, from the cache?) of one text under a vocabulary (or a tokenizer)."""
    if getattr(vocabulary, "kind", "word") != "word":
        return _encoded_tokens(source, vocabulary, store, sha256)
    vocabulary = getattr(vocabulary, "vocabulary", vocabulary)  # a WordTokenizer: its vocabulary
    sha256 = sha256 or source.sha256()
    key = ids_key(sha256, vocabulary, lowercase)
    hit = store.load_ids(key)
    if hit is not None:
        return (*hit, True)
    lookup, unk = vocabulary.index.get, vocabulary.unk_id
    num_unknown, has_words = 0, False
    with _writing(store) as ids_file:
        for block in TextReader(source, expected_sha256=sha256):
            words = block_words(block, lowercase)
            ids = np.fromiter(map(lookup, words, itertools.repeat(unk)), dtype=np.int32, count=len(words))
            ids_file.append(ids)
            unknown = int(np.count_nonzero(ids == unk))
            if unknown:
                num_unknown += unknown - words.count(UNK)  # a literal <unk> is a known word
            has_words = has_words or len(words) > words.count(EOS)
        if not has_words:
            raise no_words_error(source.label)
        ids = store.save_ids(key, ids_file, num_unknown, source=source.label, text_sha256=sha256,
                             vocabulary_sha256=vocabulary.sha256(), lowercase=bool(lowercase))
    return ids, num_unknown, False


def _encoded_tokens(source, tokenizer, store, sha256=None):
    """`_encoded` for a char, byte or bpe tokenizer: (ids, number of tokens read as <unk>, from the cache?)."""
    sha256 = sha256 or source.sha256()
    key = ids_key(sha256, tokenizer.vocabulary, tokenizer.lowercase, tokenizer.sha256())
    hit = store.load_ids(key)
    if hit is not None:
        return (*hit, True)
    num_unknown, has_text = 0, False
    with _writing(store) as ids_file:
        for block in TextReader(source, expected_sha256=sha256):
            ids, unknown = tokenizer.encode_counting(block)
            ids_file.append(ids)
            num_unknown += unknown
            has_text = has_text or bool(block.strip())
        if not has_text:
            raise no_words_error(source.label)
        ids = store.save_ids(key, ids_file, num_unknown, source=source.label, text_sha256=sha256,
                             tokenizer=tokenizer.kind, tokenizer_sha256=tokenizer.sha256(),
                             lowercase=bool(tokenizer.lowercase))
    return ids, num_unknown, False


class _writing:
    """A new IdsFile in `store`; a failed write to it becomes a one-line LstmlmError naming the folder."""

    def __init__(self, store):
        self.store = store

    def __enter__(self):
        try:
            self.ids_file = self.store.new_ids()
        except OSError as error:
            raise self._error(error) from None
        return self.ids_file.__enter__()

    def __exit__(self, kind, error, traceback):
        self.ids_file.__exit__(kind, error, traceback)
        if isinstance(error, OSError):
            raise self._error(error) from None
        return False

    def _error(self, error):
        return LstmlmError(f"{self.store.directory}: cannot write token ids ({error.strerror or error}); free "
                           "some space or set LSTMLM_CACHE_DIR (or LSTMLM_NO_CACHE=1)")
