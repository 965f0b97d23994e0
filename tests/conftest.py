"""Shared fixtures: a small synthetic corpus on disk and one tiny trained run directory for the whole session.

Everything is sized to train in seconds on two busy CPU cores.
"""

import hashlib
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import lstmlm  # noqa: E402,F401  (registers the Keras classes)

try:  # keep the suite off the second core, which long training runs may be using
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "finds", "chases", "hears", "wants"]
OBJECTS = ["the ball", "a fish", "the house", "some bread", "the river", "a song"]


def toy_sentences(count, seed):
    """`count` sentences of a tiny grammar, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(count):
        line = f"{SUBJECTS[rng.integers(len(SUBJECTS))]} {VERBS[rng.integers(len(VERBS))]} " \
               f"{OBJECTS[rng.integers(len(OBJECTS))]}"
        if rng.random() < 0.3:
            line += " today"
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_corpus(directory, train_sentences=300, other_sentences=30):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count, seed in (("train", train_sentences, 1), ("valid", other_sentences, 2),
                               ("test", other_sentences, 3)):
        paths[split] = directory / f"toy.{split}.txt"
        paths[split].write_text(toy_sentences(count, seed), encoding="utf-8")
    return paths


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory):
    """{'train', 'valid', 'test'} -> Path of the toy corpus files (read-only for tests)."""
    return write_corpus(tmp_path_factory.mktemp("toy"))


def tiny_config(paths, **overrides):
    """The smallest sensible Config on the toy corpus."""
    from lstmlm.config import Config

    values = dict(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]), hidden_size=16,
                  num_layers=2, num_steps=8, batch_size=8, epochs=2, optimizer="adam", learning_rate=0.03,
                  clip_norm=5.0, seed=1, precision="float32", learning_rate_schedule="constant", init_scale=0.0,
                  sum_over_time=False)
    values.update(overrides)
    return Config(**values)


@pytest.fixture(scope="session")
def tiny_run(toy_corpus, tmp_path_factory):
    """A run directory trained for 3 epochs on the toy corpus. Tests must not modify it (copy it first)."""
    from lstmlm.training import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    lines = []
    train(tiny_config(toy_corpus, epochs=3), out=out, log=lines.append, command=["lstmlm", "train", "--preset", "tiny"],
          progress=False)
    return out


def tree_digest(directory):
    """{relative path: sha256} of every file under `directory`, to prove nothing was changed."""
    directory = Path(directory)
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.fixture(scope="session")
def loaded_tiny(tiny_run):
    """The tiny run loaded as a LanguageModel (shared, read-only)."""
    from lstmlm.language_model import load

    return load(tiny_run)
