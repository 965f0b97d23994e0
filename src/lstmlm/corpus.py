"""Read the three splits of a corpus and turn them into id arrays with a train-only vocabulary.

The bundled PTB (Mikolov's simple-examples, as the tutorial uses it) ships gzipped inside the package and is
checked against its published sha256 every time it is read.
"""

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

from lstmlm.errors import LstmlmError
from lstmlm.tokenizer import read_words, words_of_text
from lstmlm.vocabulary import Vocabulary

PTB_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
BUNDLED = {"ptb": PTB_SHA256}


@dataclass
class Corpus:
    """Token ids of each split (int32 arrays) and the vocabulary built from train."""

    vocabulary: Vocabulary
    splits: dict  # name -> np.ndarray of ids
    sources: dict  # name -> where the text came from

    def __getitem__(self, name):
        return self.splits[name]


def bundled_text(name, split):
    """The text of a bundled corpus split, verified against its sha256."""
    if name not in BUNDLED:
        raise LstmlmError(f"--data: unknown bundled corpus {name!r} (bundled: {', '.join(BUNDLED)})")
    resource = resources.files("lstmlm") / "data" / name / f"{name}.{split}.txt.gz"
    data = gzip.decompress(resource.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != BUNDLED[name][split]:
        raise LstmlmError(f"{resource}: sha256 {digest} does not match the published {BUNDLED[name][split]}")
    return data.decode("utf-8")


def read_splits(config, only=None):
    """{split: words} for the configured corpus (all splits, or those in `only`), and {split: source}."""
    if config.train is not None:
        paths = {"train": config.train, "valid": config.valid}
        if config.test is not None:
            paths["test"] = config.test
        paths = {split: path for split, path in paths.items() if only is None or split in only}
        words = {split: read_words(path, config.lowercase) for split, path in paths.items()}
        return words, {split: str(path) for split, path in paths.items()}
    splits = [split for split in ("train", "valid", "test") if only is None or split in only]
    words = {split: words_of_text(bundled_text(config.data, split), config.lowercase, f"{config.data}.{split}")
             for split in splits}
    return words, {split: f"bundled {config.data}.{split}.txt" for split in words}


def read_split(config, split):
    """The words of one split of a run's corpus (evaluate --split, predict --split), or a one-line error."""
    try:
        words, _ = read_splits(config, only=[split])
    except LstmlmError as error:
        raise LstmlmError(f"--split {split}: the run's corpus is not available here ({error}); use --file") from None
    if split not in words:
        raise LstmlmError(f"--split {split}: this run has no {split} split (use --file)")
    return words[split]


def load_corpus(config):
    """Build the vocabulary from train and encode every split.

    Example:
        >>> from lstmlm.config import Config
        >>> corpus = load_corpus(Config())
        >>> len(corpus["train"]), len(corpus.vocabulary)
        (929589, 10000)
    """
    words, sources = read_splits(config)
    vocabulary = Vocabulary.build(words["train"], config.max_vocabulary_size or None)
    splits = {split: np.asarray(vocabulary.encode(w), dtype=np.int32) for split, w in words.items()}
    return Corpus(vocabulary, splits, sources)
