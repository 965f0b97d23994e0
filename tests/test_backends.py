"""A run trained on the torch backend (fused kernel) loads and predicts on another Keras backend (JAX), through
the pure-Keras LSTM loop, with the same numbers: the `.keras` files and the fallback path are portable."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

SCRIPT = """
import json, sys
import keras, lstmlm
from lstmlm.inference.language_model import load
model = load(sys.argv[1])
print(json.dumps({"backend": keras.backend.backend(),
                  "next": model.predict_next("the cat sat on", top_k=5)["predictions"],
                  "generated": model.generate("the dog", num_words=8, temperature=0)["words"],
                  "perplexity": model.evaluate(file=sys.argv[2])["perplexity"]}))
"""


def run_on(backend, run_dir, text_file):
    environment = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir), str(text_file)], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_torch_trained_run_gives_the_same_numbers_on_jax(tiny_run, toy_corpus):
    text_file = toy_corpus["test"]
    on_torch, on_jax = run_on("torch", tiny_run, text_file), run_on("jax", tiny_run, text_file)
    assert (on_torch["backend"], on_jax["backend"]) == ("torch", "jax")
    assert [w["word"] for w in on_jax["next"]] == [w["word"] for w in on_torch["next"]]
    for a, b in zip(on_jax["next"], on_torch["next"]):
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-4)
    assert on_jax["generated"] == on_torch["generated"]
    assert on_jax["perplexity"] == pytest.approx(on_torch["perplexity"], rel=1e-5)
    assert math.isfinite(on_jax["perplexity"]) and on_jax["perplexity"] > 1
