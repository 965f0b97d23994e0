"""Property-based tests (Hypothesis): the example tests' claims, checked on generated inputs.

- text -> words -> ids -> words: arbitrary Unicode text, arbitrary bytes as a corpus file, vocab.txt round trips;
- batching: targets are the inputs shifted by one, streams run on across batches, every token is read once,
  and epochs restarted from a saved position (--resume) give the unbroken run's batches;
- samplers never leave their allowed set, and the allowed sets are what top-k / top-p promise;
- evaluation does not depend on the chunk length;
- damaged files (arbitrary bytes, truncations and flips of real files) give LstmlmError or a good load;
- the CLI, fed random verbs, flags and values, exits 0 or prints one `... error: ...` line with status 2.

Every property has a bounded number of examples and a deadline; `derandomize` makes each run the same examples
(a failure reproduces), and nothing touches the network. For a longer, random search:
`LSTMLM_PROPERTY_SCALE=20 pytest tests/test_properties.py` (20 times the examples, a new draw each run).
"""

import contextlib
import io
import json
import math
import os
import shutil
import string
import tempfile
import urllib.error
import urllib.request
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lstmlm import run_directory as rd
from lstmlm.data.batches import WindowBatches, num_stream_batches, stream_batches
from lstmlm.errors import LstmlmError
from lstmlm.inference.samplers import GreedySampler, TopKSampler, TopPSampler, make_sampler
from lstmlm.data.tokenizer import EOS, UNK, read_words, split_words, words_of_text
from lstmlm.data.vocabulary import Vocabulary


SCALE = float(os.environ.get("LSTMLM_PROPERTY_SCALE", "1"))


def bounded(examples, seconds=2):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=timedelta(seconds=seconds),
                    derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# Text a file can hold: any code point but the surrogates (UTF-8 cannot encode them).
UNICODE = st.characters(blacklist_categories=("Cs",))
TEXT = st.text(UNICODE, max_size=200) | st.text(st.sampled_from("ab <>eosunk\n\t\r\x0b\x1c\u2028\u00a0É"), max_size=60)
WORD = (st.sampled_from(["a", "b", "c", EOS, UNK, "É", "日本", "naïve", "<EOS>"])
        | st.text(UNICODE, min_size=1, max_size=8).map(lambda text: "".join(text.split())).filter(bool))


def reference_words(text):
    """The tutorial's rule written out: the words of each line, `<eos>` after every line break."""
    lines = text.split("\n")
    words = []
    for number, line in enumerate(lines):
        words += line.split()
        if number < len(lines) - 1:
            words.append(EOS)
    return words


# ---- text -> words ----------------------------------------------------------------------------------------

@bounded(200)
@given(text=TEXT)
def test_words_of_text_follow_the_line_rule(text):
    expected = reference_words(text)
    if all(word == EOS for word in expected):
        with pytest.raises(LstmlmError, match="contains no words"):
            words_of_text(text)
        return
    words = words_of_text(text)
    assert words == expected
    assert all(word and word.split() == [word] for word in words)  # no empty word, no whitespace inside one
    # a prompt (one line) is split exactly like a line of the corpus
    for line in text.split("\n"):
        assert split_words(line) == line.split() == [w for w in reference_words(line)]


@bounded(200)
@given(data=st.binary(max_size=300) | TEXT.map(lambda text: text.encode("utf-8")))
@example(data=b"the cat\nna\xefve\n")
@example(data=b"\xff")
def test_read_words_of_any_bytes(data):
    """A corpus file of any bytes: its words, or one LstmlmError naming the line of the first non-UTF-8 byte."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "corpus.txt"
        path.write_bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            with pytest.raises(LstmlmError, match=rf"corpus\.txt: line {line}: bytes that are not UTF-8 \(at byte "
                                                  rf"{error.start}\)$"):
                read_words(path)
            return
        if all(word == EOS for word in reference_words(text)):
            with pytest.raises(LstmlmError, match=r"corpus\.txt: contains no words"):
                read_words(path)
        else:
            assert read_words(path) == reference_words(text)


# ---- vocabulary -------------------------------------------------------------------------------------------

@bounded(150)
@given(words=st.lists(WORD, max_size=60), max_size=st.none() | st.integers(1, 12), others=st.lists(WORD, max_size=20))
def test_vocabulary_order_counts_and_round_trip(words, max_size, others):
    vocabulary = Vocabulary.build(words, max_size)
    # ids follow descending count, then the word (the tutorial's build_vocab)
    keys = [(-count, word) for word, count in zip(vocabulary.words, vocabulary.counts)]
    assert keys == sorted(keys)
    assert len(set(vocabulary.words)) == len(vocabulary) and UNK in vocabulary.index
    assert sum(vocabulary.counts) == len(words)  # every token counted once (the folded ones as <unk>)
    types = set(words) | {UNK}
    assert len(vocabulary) == (len(types) if max_size is None else min(max_size, len(types)))
    if max_size is None:
        assert set(vocabulary.words) == types
    else:  # the kept words are the most frequent: none dropped is more frequent than one kept
        kept = [c for w, c in zip(vocabulary.words, vocabulary.counts) if w != UNK]
        dropped = [words.count(w) for w in set(words) - set(vocabulary.words)]
        assert not kept or not dropped or min(kept) >= max(dropped)
    # encode -> decode gives the words, or <unk> for the ones outside the vocabulary
    text = words + others
    ids = vocabulary.encode(text)
    assert all(0 <= i < len(vocabulary) for i in ids)
    assert vocabulary.decode(ids) == [w if w in vocabulary.index else UNK for w in text]
    assert vocabulary.unknown(text) == [w for w in text if w not in vocabulary.index]
    # vocab.txt round trip
    with tempfile.TemporaryDirectory() as directory:
        vocabulary.save(Path(directory) / "vocab.txt")
        loaded = Vocabulary.load(Path(directory) / "vocab.txt")
    assert (loaded.words, loaded.counts) == (vocabulary.words, vocabulary.counts)
    assert loaded.encode(text) == ids


@bounded(60)
@given(text=TEXT)
def test_corpus_file_to_ids_and_back(text):
    """A UTF-8 file -> words -> vocabulary -> vocab.txt -> ids -> words: the same words."""
    assume(any(word != EOS for word in reference_words(text)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "train.txt"
        path.write_text(text, encoding="utf-8", newline="")
        words = read_words(path)
        Vocabulary.build(words).save(Path(directory) / "vocab.txt")
        vocabulary = Vocabulary.load(Path(directory) / "vocab.txt")
    assert vocabulary.decode(vocabulary.encode(words)) == words == reference_words(text)


@bounded(150)
@given(data=st.binary(max_size=200)
       | st.lists(st.tuples(WORD, st.sampled_from(["\t", " ", "\t\t", ""]), st.sampled_from(["1", "0", "²", "x", "-1",
                                                                                            "12", ""])),
                  max_size=8).map(lambda lines: "".join(f"{w}{t}{c}\n" for w, t, c in lines).encode()))
def test_vocabulary_load_of_any_bytes(data):
    """Any vocab.txt: a vocabulary whose save gives the file back, or one LstmlmError naming the file."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "vocab.txt"
        path.write_bytes(data)
        try:
            vocabulary = Vocabulary.load(path)
        except LstmlmError as error:
            assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
            return
        vocabulary.save(path)
        assert Vocabulary.load(path).words == vocabulary.words and UNK in vocabulary.index


# ---- batching ---------------------------------------------------------------------------------------------

@bounded(150)
@given(n=st.integers(2, 200), batch_size=st.integers(1, 12), num_steps=st.integers(1, 30), seed=st.integers(0, 9),
       drop_last=st.booleans())
def test_stream_batches_invariants(n, batch_size, num_steps, seed, drop_last):
    ids = np.random.default_rng(seed).integers(0, 5, n)  # repeats: positions, not values, must line up
    length = (n - 1) // batch_size
    if length < 1:
        with pytest.raises(LstmlmError, match="too short"):
            next(stream_batches(ids, batch_size, num_steps, drop_last))
        return
    batches = list(stream_batches(ids, batch_size, num_steps, drop_last))
    assert len(batches) == num_stream_batches(n, batch_size, num_steps, drop_last)
    for index, (x, y) in enumerate(batches):
        assert x.shape == y.shape and x.shape[0] == batch_size
        assert x.shape[1] == num_steps or (index == len(batches) - 1 and not drop_last and x.shape[1] < num_steps)
    if not batches:
        return
    inputs = np.concatenate([x for x, _ in batches], axis=1)  # (batch_size, steps read): row r is stream r
    targets = np.concatenate([y for _, y in batches], axis=1)
    read = inputs.shape[1]
    for row in range(batch_size):  # each stream is one contiguous piece of the corpus; targets one word on
        start = row * length
        np.testing.assert_array_equal(inputs[row], ids[start:start + read])
        np.testing.assert_array_equal(targets[row], ids[start + 1:start + read + 1])
    if not drop_last:  # every token of the first batch_size * length is read exactly once
        assert read == length and inputs.size == batch_size * length


@bounded(150)
@given(n=st.integers(2, 150), batch_size=st.integers(1, 6), num_steps=st.integers(1, 20),
       skip_step=st.integers(1, 25), epochs=st.integers(1, 3))
def test_window_batches_invariants(n, batch_size, num_steps, skip_step, epochs):
    ids = np.arange(n) * 7 % 101  # distinct values: a window's position can be read off its first id
    if n <= num_steps + 1 or n // (batch_size * num_steps) < 1:
        with pytest.raises(LstmlmError, match="too short"):
            WindowBatches(ids, batch_size, num_steps, skip_step)
        return
    window = WindowBatches(ids, batch_size, num_steps, skip_step)
    assert window.steps_per_epoch == n // (batch_size * num_steps)
    position, count = 0, 0
    for _ in range(epochs):
        for x, y in window.epoch():
            count += 1
            assert x.shape == y.shape == (batch_size, num_steps)
            for row in range(batch_size):
                if position + num_steps >= n:
                    position = 0  # the tutorial's wrap: a window and its targets always fit
                np.testing.assert_array_equal(x[row], ids[position:position + num_steps])
                np.testing.assert_array_equal(y[row], ids[position + 1:position + num_steps + 1])
                position += skip_step
    assert count == epochs * window.steps_per_epoch and window.position == position


@bounded(100)
@given(n=st.integers(2, 150), batch_size=st.integers(1, 6), num_steps=st.integers(1, 20), skip_step=st.integers(0, 25),
       batching=st.sampled_from(["stream", "window"]), epochs=st.integers(2, 4), data=st.data())
def test_batches_resume_where_they_stood(n, batch_size, num_steps, skip_step, batching, epochs, data):
    """Training's Batches: epochs started afresh from a saved position (as --resume does) give exactly the
    batches of the unbroken run."""
    from lstmlm.data.batches import Batches
    from lstmlm.config import Config

    config = Config(batching=batching, batch_size=batch_size, num_steps=num_steps, skip_step=skip_step)
    ids = np.arange(n) * 7 % 101
    try:
        unbroken = Batches(config, ids)
    except LstmlmError as error:
        assert "too short" in str(error)
        return
    cut = data.draw(st.integers(1, epochs - 1), label="epochs before the interruption")
    expected, positions, position = [], [], 0
    for _ in range(epochs):
        positions.append(position)
        expected.append([(x.copy(), y.copy()) for x, y in unbroken.epoch(position)])
        position = unbroken.position
        assert len(expected[-1]) == unbroken.steps_per_epoch
    resumed = Batches(config, ids)  # a new process: nothing carried over but the saved position
    position = positions[cut]
    for epoch in range(cut, epochs):
        assert position == positions[epoch]
        got = list(resumed.epoch(position))
        position = resumed.position
        assert len(got) == len(expected[epoch])
        for (x, y), (want_x, want_y) in zip(got, expected[epoch]):
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)


# ---- samplers ---------------------------------------------------------------------------------------------

LOGITS = st.lists(st.floats(-1e4, 1e4) | st.sampled_from([0.0, 1.0, 1.0, 3e38, -3e38]), min_size=1,
                  max_size=40).map(lambda values: np.array(values, dtype=np.float32).astype(np.float64))
TEMPERATURE = st.sampled_from([0.0, 1e-310, 1e-6, 0.5, 1.0, 2.0, 1e6]) | st.floats(0, 100)


@bounded(200)
@given(logits=LOGITS, temperature=TEMPERATURE, top_k=st.integers(0, 50),
       top_p=st.sampled_from([1.0, 0.5, 1e-9]) | st.floats(0, 1, exclude_min=True), seed=st.integers(0, 2**32))
def test_samplers_stay_in_their_allowed_set(logits, temperature, top_k, top_p, seed):
    sampler = make_sampler(temperature, top_k, top_p)
    rng = np.random.default_rng(seed)
    if isinstance(sampler, GreedySampler):
        assert temperature == 0
        assert sampler(logits, rng) == int(np.argmax(logits)) == sampler.allowed(logits)[0]
        return
    probabilities = sampler.probabilities(logits)
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0)
    with np.errstate(over="ignore"):
        tempered = (logits - logits.max()) / temperature  # what the sampler restricts: -inf where it overflows
    allowed = set(sampler.allowed(tempered).tolist())
    assert set(np.flatnonzero(probabilities).tolist()) <= allowed
    for _ in range(5):
        assert sampler(logits, rng) in allowed
    # the allowed words are the most likely ones: no word outside is more likely than one inside
    outside = sorted(set(range(len(logits))) - allowed)
    if outside:
        assert tempered[sorted(allowed)].min() >= tempered[outside].max()
    if isinstance(sampler, TopKSampler):
        assert len(allowed) == min(top_k, len(logits))
    if isinstance(sampler, TopPSampler) and top_k == 0:
        order = sorted(allowed, key=lambda i: -tempered[i])
        full = np.exp(tempered - tempered.max()) / np.exp(tempered - tempered.max()).sum()
        assert full[order].sum() >= top_p - 1e-9 or len(allowed) == len(logits)  # reaches p...
        assert full[order[:-1]].sum() < top_p + 1e-9  # ...and is the smallest such set


@bounded(100)
@given(temperature=st.floats(allow_nan=True) | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1e-300]),
       top_k=st.integers(-5, 5), top_p=st.floats(allow_nan=True))
def test_make_sampler_accepts_only_meaningful_settings(temperature, top_k, top_p):
    meaningful = math.isfinite(temperature) and temperature >= 0 and top_k >= 0 and 0 < top_p <= 1
    if meaningful:
        make_sampler(temperature, top_k, top_p)
    else:
        with pytest.raises(ValueError, match="temperature|top_k|top_p"):
            make_sampler(temperature, top_k, top_p)


# ---- evaluation -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def untrained():
    """A tiny untrained model (random weights, scale 0.5 so the numbers are far from uniform) on 8 words."""
    from lstmlm.model.lstm_language_model import LSTMLanguageModel

    vocabulary = Vocabulary.build(list("aabbbcdef") + [EOS, EOS])
    model = LSTMLanguageModel(vocabulary_size=len(vocabulary), embedding_size=6, hidden_size=6, num_layers=2,
                              init_scale=0.5, seed=3)
    model.build((None, None))
    assert len(vocabulary) == 8  # ids 0..7 below
    return model, vocabulary


@bounded(25, seconds=10)
@given(ids=st.lists(st.integers(0, 7), min_size=1, max_size=70), chunk_length=st.integers(1, 80),
       batch_size=st.integers(1, 4))
def test_evaluation_does_not_depend_on_the_chunk_length(untrained, ids, chunk_length, batch_size):
    from lstmlm.inference.evaluate import evaluate_ids

    model, vocabulary = untrained
    whole = evaluate_ids(model, ids, vocabulary, evaluation_batch_size=batch_size, chunk_length=len(ids) + 1)
    chunked = evaluate_ids(model, ids, vocabulary, evaluation_batch_size=batch_size, chunk_length=chunk_length)
    assert chunked["tokens"] == whole["tokens"] == len(ids)  # the leading <eos> makes every token count
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert chunked["perplexity"] == pytest.approx(math.exp(whole["loss"]), rel=1e-5)
    # hit counts agree up to a float near-tie between two words (at most one token either way)
    for key in ("accuracy", "top5_accuracy"):
        assert abs(chunked[key] - whole[key]) * len(ids) <= 1 + 1e-9


# ---- damaged files: any bytes load or give one LstmlmError ---------------------------------------------------

def one_line_error(path, call):
    """call() either returns or raises an LstmlmError of one line naming `path` (or a file inside it)."""
    try:
        return call()
    except LstmlmError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error), str(error)
        return None


@bounded(150)
@given(data=st.binary(max_size=300) | TEXT.map(str.encode) | st.sampled_from([
    b"epoch,loss\n1,2\n", b"epoch,loss\n1\n", b"epoch\n\x00\n", b'a,"b\n', b"\xef\xbb\xbfepoch,x\n1,2\n"]))
def test_history_of_any_bytes(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "history.csv"
        path.write_bytes(data)
        rows = one_line_error(path, lambda: rd.read_history(path))
        assert rows is None or all(isinstance(row.get("epoch", 0), int) for row in rows)


@bounded(150)
@given(data=st.binary(max_size=200) | TEXT.map(str.encode)
       | st.dictionaries(st.sampled_from(["config", "format_version", "command"]),
                         st.none() | st.integers(-3, 3) | st.text(max_size=3) | st.booleans()
                         | st.dictionaries(st.sampled_from(["hidden_size", "lowercase", "train", "widht"]),
                                           st.none() | st.integers(-3, 30) | st.booleans() | st.text(max_size=3)))
       .map(lambda values: json.dumps(values).encode()))
def test_config_json_of_any_bytes(data):
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "config.json").write_bytes(data)
        one_line_error(Path(directory) / "config.json", lambda: rd.read_config(directory))


@pytest.fixture(scope="module")
def real_files(tiny_run):
    """The bytes of a real model and optimizer file, and what they hold."""
    model, optimizer = tiny_run / "model.keras", tiny_run / "checkpoints" / "optimizer-03.npz"
    return {"model.keras": (model.read_bytes(), [w.copy() for w in rd.load_keras_model(model).get_weights()]),
            "optimizer-03.npz": (optimizer.read_bytes(), rd.load_arrays(optimizer))}


@bounded(40, seconds=10)
@given(name=st.sampled_from(["model.keras", "optimizer-03.npz"]), cut=st.integers(0, 50_000),
       flips=st.lists(st.tuples(st.integers(0, 50_000), st.integers(1, 255)), max_size=3))
def test_truncated_or_flipped_model_and_arrays(real_files, name, cut, flips):
    """A real .keras / .npz file, cut short and with bytes changed: it loads what the original holds (a change
    the format does not check, such as a timestamp), or one LstmlmError naming the file."""
    original, contents = real_files[name]
    data = bytearray(original[:cut])
    for position, value in flips:
        if position < len(data):
            data[position] ^= value
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(bytes(data))
        if name.endswith(".keras"):
            loaded = one_line_error(path, lambda: [w.copy() for w in rd.load_keras_model(path).get_weights()])
            if loaded is not None:
                assert len(loaded) == len(contents) and all(np.array_equal(a, b) for a, b in zip(loaded, contents))
        else:
            loaded = one_line_error(path, lambda: rd.load_arrays(path))
            if loaded is not None:
                assert loaded.keys() == contents.keys()
                assert all(np.array_equal(loaded[k], contents[k]) for k in contents)


# ---- the command line -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tiny_run, tmp_path_factory):
    """A scratch folder (the fuzz's working directory) with a copy of the tiny run and some awkward files."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_run, root / "run")
    (root / "latin1.txt").write_bytes(b"the cat\nna\xefve caf\xe9\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "words.txt").write_text("the cat sees a fish\nthe dog\n", encoding="utf-8")
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "folder").mkdir()
    (root / "list.json").write_text("[1, 2]", encoding="utf-8")
    (root / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")
    (root / "bad.json").write_text('{"hidden_size": ', encoding="utf-8")
    (root / "damaged").mkdir()
    for name in ("config.json", "vocab.txt", "history.csv"):
        shutil.copy(tiny_run / name, root / "damaged" / name)
    (root / "damaged" / "model.keras").write_bytes((tiny_run / "model.keras").read_bytes()[:5000])
    return root


# Any code point but NUL (argv cannot hold it), surrogates too (argv holds undecodable bytes as surrogates); no
# "/" and never "." or "..", so a garbage word taken as a path names something inside the sandbox.
GARBAGE = st.text(st.characters(blacklist_characters="\x00"), max_size=12).map(
    lambda text: text.replace("/", "\u2215") + ("x" if text in (".", "..") else ""))
ODD_NUMBERS = st.sampled_from(["1e9", "nan", "inf", "-inf", "1e-310", "0x10", "", "99999999999999999999", "-0.0"])
INT = st.one_of(st.integers(0, 12), st.integers(0, 40), st.integers(-3, 40), ODD_NUMBERS | st.just("3.5")).map(str)
REAL = st.one_of(st.sampled_from(["0", "0.5", "0.9", "1", "2"]), st.floats(0, 3), st.floats(-2, 1e3),
                 ODD_NUMBERS).map(str)
RUNS = st.one_of(st.just("run"), st.just("run"),
                 st.sampled_from(["damaged", "missing-run", "latin1.txt", "folder", "", "-", "binary.bin"]))
FILES = st.sampled_from(["words.txt", "latin1.txt", "empty.txt", "binary.bin", "folder", "missing.txt", "run"])
TEXTS = st.one_of(st.sampled_from(["the cat", "", "zorblax", "THE Cat.", "\u00e9\u2028x", "\udcff", "a bird sees"]),
                  GARBAGE)

PRECISION = st.sampled_from(["auto", "float32", "bfloat16", "int8", "float16"])

# flag -> strategy of its value (None: a flag without value)
VERB_FLAGS = {
    "evaluate": {"--split": st.sampled_from(["train", "valid", "test", "dev"]), "--file": FILES,
                 "--evaluation-batch-size": INT, "--batch-size": INT, "--json": None, "--precision": PRECISION},
    "predict": {"--text": TEXTS, "--top-k": INT, "--split": st.sampled_from(["valid", "test", "x"]),
                "--skip": INT, "--count": INT, "--json": None,
                "--precision": PRECISION},
    "generate": {"--prompt": TEXTS, "--num-words": st.integers(-3, 12).map(str) | GARBAGE,
                 "--words": st.integers(-3, 12).map(str), "--temperature": REAL,
                 "--top-k": INT, "--top-p": REAL, "--seed": INT, "--json": None,
                 "--precision": PRECISION},
    "inspect": {"--text": TEXTS, "--layer": INT, "--units": INT, "--json": None,
                "--out": st.sampled_from(["plots/gates.png", "folder", "x/y.png", "gates.txt"])},
    "export": {"--format": st.sampled_from(["onnx", "tflite"]),
               "--out": st.sampled_from(["exported", "latin1.txt", "folder", "deep/er"])},
    "plot": {"--out": st.sampled_from(["plots", "latin1.txt", "deep/er"]) | GARBAGE},
    # serve only ever gets run directories it cannot load (a valid one would listen forever)
    "serve": {"--port": INT, "--max-request-bytes": INT, "--host": st.sampled_from(["127.0.0.1", "nohost"]),
              "--log-level": st.sampled_from(["info", "loud"])},
    # train always with --print-config, and --resume only of what is not a run directory: a run without
    # state.json is started over (and --epochs 99999999999999999999 would then train for ever)
    "train": {"--preset": st.sampled_from(["tiny", "small", "enormous"]),
              "--config": st.sampled_from(["config.json", "list.json", "bad.json", "missing.json"]),
              "--resume": st.sampled_from(["missing-run", "folder", "latin1.txt"]),
              "--hidden-size": INT, "--num-steps": INT, "--dropout": REAL, "--learning-rate": REAL,
              "--batching": st.sampled_from(["stream", "window", "diagonal"]), "--epochs": INT,
              "--optimizer": st.sampled_from(["sgd", "adam", "rmsprop"]), "--tie-weights": None,
              "--no-tie-weights": None, "--train": FILES, "--valid": FILES, "--max-minutes": REAL,
              "--max-vocabulary-size": INT, "--max-vocab": INT, "--evaluation-batch-size": INT,
              "--learning-rate-schedule": st.sampled_from(["constant", "decay", "cosine", "sawtooth"])},
    "download": {"--out": st.sampled_from(["downloads", "latin1.txt"]), "--sha256": st.sampled_from(["ab", "0" * 64])},
}
RUN_VERBS = {"evaluate", "predict", "generate", "inspect", "plot", "serve", "export"}


def rarely(draw, one_in):
    return draw(st.integers(0, one_in - 1)) == 0


@st.composite
def command_lines(draw):
    """Mostly well-formed command lines that reach the verb's own code, sometimes with garbage mixed in."""
    verb = draw(GARBAGE) if rarely(draw, 12) else draw(st.sampled_from(sorted(VERB_FLAGS)))
    argv = [verb]
    flags = VERB_FLAGS.get(verb, {})
    if verb in RUN_VERBS and not rarely(draw, 15):
        argv.append(draw(st.sampled_from(["missing-run", "latin1.txt", "damaged"]) if verb == "serve" else RUNS))
    if verb == "download":
        urls = st.sampled_from(["ftp://example.org/x", "not a url", "http://", "https://192.0.2.1/f.txt"])
        argv += draw(st.lists(urls | GARBAGE.filter(lambda text: "://" not in text), max_size=2))
    for _ in range(draw(st.integers(0, 4))):
        if not flags or rarely(draw, 15):
            argv.append(draw(st.sampled_from(["--help", "--bogus", "-x", "--", "-1"]) | GARBAGE))
            continue
        name = draw(st.sampled_from(sorted(flags)))
        argv.append(name)
        if flags[name] is not None and not rarely(draw, 20):  # rarely, the value is missing
            argv.append(draw(GARBAGE) if rarely(draw, 10) else draw(flags[name]))
    if verb == "train":
        argv.append("--print-config")
        if "--resume" not in argv:
            argv += ["--train", "words.txt", "--valid", "words.txt"]
    if verb == "generate" and "--words" not in argv and "--num-words" not in argv:
        argv += ["--num-words", "3"]  # the default, 30 words, would make the fuzz slow
    # the required flags, mostly given, so that most command lines get past the parser
    needed = {"inspect": ["--text"], "predict": ["--text", "--split"], "download": ["--out"],
              "export": ["--out"]}.get(verb, [])
    if needed and not set(needed) & set(argv) and not rarely(draw, 5):
        argv += [needed[0], draw(flags[needed[0]])]
    return argv


ERROR_LINE = r"^lstmlm( [\w-]+)?: error: "


@bounded(60, seconds=20)
@given(argv=command_lines())
@example(argv=["generate", "run", "--seed", "-1", "--num-words", "2"])
@example(argv=["generate", "run", "--temperature", "1e-310", "--num-words", "2"])
@example(argv=["generate", "run", "--top-p", "nan", "--words", "2"])
@example(argv=["evaluate", "damaged"])
@example(argv=["predict", "run", "--text", "\udcff"])
def test_cli_fuzz(sandbox, monkeypatch, argv):
    """Whatever the command line: exit 0, or exit 2 with exactly one `lstmlm...: error: ...` line; no traceback."""
    import re

    from lstmlm.cli import main

    def offline(*args, **kwargs):
        raise urllib.error.URLError("the network is off in the tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(sandbox)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
            code = exit_.code
    err = err.getvalue()
    assert "Traceback" not in out.getvalue() + err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.splitlines()
        assert lines and re.match(ERROR_LINE, lines[-1]) and err.endswith("\n"), err
        assert all(re.match(r"^(lstmlm: )?note: ", line) for line in lines[:-1]), err  # only notes before it
