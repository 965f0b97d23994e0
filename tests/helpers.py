"""Helpers shared by the tests (plain functions; the fixtures built from them are in conftest.py).

    from helpers import png_size, numpy, write_corpus
"""

import contextlib
import hashlib
import struct
import threading
import time
from pathlib import Path

import numpy as np

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "finds", "chases", "hears", "wants"]
OBJECTS = ["the ball", "a fish", "the house", "some bread", "the river", "a song"]


def toy_sentences(count, seed):
    """`count` sentences of a tiny grammar (subject verb object [today]), reproducible from `seed`."""
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
    """Write toy.{train,valid,test}.txt of the toy grammar; returns {split: Path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count, seed in (("train", train_sentences, 1), ("valid", other_sentences, 2),
                               ("test", other_sentences, 3)):
        paths[split] = directory / f"toy.{split}.txt"
        paths[split].write_text(toy_sentences(count, seed), encoding="utf-8")
    return paths


def zipf_text(vocabulary_size, num_words, structure, seed=0, words_per_line=20):
    """Random text over `vocabulary_size` words `w0 w1 ...`: each word is Zipf(1)-distributed, except that with
    probability `structure` it is a fixed function of the word before (a permutation), so an LSTM has something
    to learn beyond the unigram. PTB-like in the ways that matter to training dynamics: a large vocabulary, a
    long-tailed unigram, weak local structure."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocabulary_size + 1)
    draws = rng.choice(vocabulary_size, size=num_words, p=p / p.sum())
    follows, keep = rng.permutation(vocabulary_size), rng.random(num_words) < structure
    words, word = [], 0
    for index in range(num_words):
        word = follows[word] if keep[index] else draws[index]
        words.append(f"w{word}")
    return "".join(" ".join(words[i:i + words_per_line]) + "\n" for i in range(0, num_words, words_per_line))


def tiny_config(paths, **overrides):
    """The smallest sensible Config on the toy corpus (2 layers of 16 units)."""
    from lstmlm.config import Config

    values = dict(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]), hidden_size=16,
                  num_layers=2, num_steps=8, batch_size=8, epochs=2, optimizer="adam", learning_rate=0.03,
                  clip_norm=5.0, seed=1, precision="float32", learning_rate_schedule="constant", init_scale=0.0,
                  sum_over_time=False)
    values.update(overrides)
    return Config(**values)


def tree_digest(directory):
    """{relative path: sha256} of every file under `directory`, to prove nothing was changed."""
    directory = Path(directory)
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def numpy(tensor):
    """A backend tensor as a numpy array of its own dtype (gradient tracking dropped)."""
    from keras import ops

    return ops.convert_to_numpy(ops.stop_gradient(tensor))


def png_size(path):
    """(width, height) from the PNG header; fails unless the file starts like a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tensorboard_installed():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def serving(app):
    """Serve a FastAPI app with uvicorn in a thread on a free loopback port; yields the base URL."""
    from lstmlm.serving.server import listen, make_server

    sock = listen("127.0.0.1", 0)
    server = make_server(app, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
