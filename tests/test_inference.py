"""Inference in reduced precision, batched generation, the prefix cache and batch-mate independence, through
the loaded model (`load(run_dir, precision=...)`)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lstmlm import torch_backend
from lstmlm.errors import LstmlmError
from lstmlm.inference.language_model import LanguageModel, load
from lstmlm.precision import inference_precision
from lstmlm.inference.step_model import KerasStepModel

PROMPTS = ["the cat", "my friend likes", "a bird hears the river today the dog", "", "zorblax the"]
PRECISIONS = ["float32", "int8", "bfloat16"]


@pytest.fixture(scope="module")
def models(tiny_run):
    """One loaded model per precision. The bfloat16 one is loaded with the capability check forced to True:
    torch computes bfloat16 on any CPU (without avx512_bf16 / AMX only slower), so the bfloat16 path is tested
    on every machine, not only on those with native support. The precision is chosen at load, so the patch only
    needs to cover the loading."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch_backend, "bfloat16_supported", lambda: True)
        return {precision: load(tiny_run, precision=precision) for precision in PRECISIONS}


def distribution(model, text):
    return {p["word"]: p["probability"] for p in model.predict_next(text, top_k=1000)["predictions"]}


def test_float32_is_the_keras_model_itself(models):
    model = models["float32"]
    reference = KerasStepModel(model.model)
    for text in PROMPTS:
        ids = model.encode_prompt(text)[0]
        outputs, _ = reference.advance([ids], reference.initial_states(1))
        expected = reference.logits(outputs[:, -1])[0]
        got = model._next_logits(model._prompt_states(ids))[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


# Tolerances: bfloat16 keeps 8 significant bits (relative rounding 2**-9 = 0.2%) in each weight and product
# input; int8 keeps 127 levels per row/channel (up to 0.4% of a row's largest value). On the tiny model the
# largest probability differences measured were 0.0025 (bfloat16) and 0.0022 (int8) over these prompts; the
# bounds leave 4-9x room and still catch a wrong layout or scale (a transposed int8 softmax weight moved them
# by 0.75).
@pytest.mark.parametrize("precision,tolerance", [("bfloat16", 0.01), ("int8", 0.02)])
def test_reduced_precision_probabilities_are_close_to_float32(models, precision, tolerance):
    for text in PROMPTS:
        exact, approximate = distribution(models["float32"], text), distribution(models[precision], text)
        assert set(exact) == set(approximate)
        worst = max(abs(exact[w] - approximate[w]) for w in exact)
        print(f"{precision} {text!r}: largest probability difference {worst:.5f}")
        assert worst < tolerance, (text, worst)
        # the first suggestion is the float32 one, or one within the tolerance of it (the toy grammar has ties)
        assert exact[max(approximate, key=approximate.get)] > max(exact.values()) - tolerance


@pytest.mark.parametrize("precision", PRECISIONS)
def test_reduced_precision_perplexity_is_close(models, toy_corpus, precision):
    exact = models["float32"].evaluate(file=toy_corpus["test"])["perplexity"]
    got = models[precision].evaluate(file=toy_corpus["test"])["perplexity"]
    assert got == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=3),
                                     dict(top_p=0.7)])
def test_batched_generation_equals_separate_seeded_runs(models, precision, options):
    model = models[precision]
    batched = model.generate("the dog", 20, seed=11, num_samples=6, **options)
    assert [s["seed"] for s in batched["samples"]] == list(range(11, 17))
    for i, sample in enumerate(batched["samples"]):
        alone = model.generate("the dog", 20, seed=11 + i, **options)
        assert sample["words"] == alone["words"] and sample["text"] == alone["text"]
    assert batched["prompt_words"] == ["the", "dog"] and batched["unknown_words"] == []
    if options.get("temperature", 1) > 0:
        assert len({tuple(s["words"]) for s in batched["samples"]}) > 1  # the rows did draw differently


def test_int8_batched_steps_are_bit_identical_to_single_rows(models):
    step = models["int8"].step_model
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(models["int8"].vocabulary), (7, 5))
    outputs, states = step.advance(ids, step.initial_states(7))
    batch_logits = step.logits(outputs)
    for row in range(7):
        single, single_states = step.advance(ids[row:row + 1], step.initial_states(1))
        assert np.array_equal(step.logits(single), batch_logits[row:row + 1])
        assert all(np.array_equal(a.numpy(), b[:, row:row + 1].numpy()) for a, b in zip(single_states, states))


def growing_texts():
    words = ("the cat sees the ball today my friend likes a fish the dog chases some bread a bird hears the "
             "river our neighbour wants a song").split()
    return [" ".join(words[:n]) for n in range(1, len(words) + 1)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_prefix_cache_gives_identical_results(tiny_run, precision):
    cached, uncached = load(tiny_run, precision=precision), load(tiny_run, precision=precision, prefix_cache_bytes=0)
    assert uncached.prefix_cache is None
    texts = growing_texts()
    for text in texts + texts[::-3]:  # typing, then going back
        assert cached.predict_next(text, top_k=10) == uncached.predict_next(text, top_k=10)
    assert cached.prefix_cache.hits > len(texts) and cached.prefix_cache.nbytes <= cached.prefix_cache.max_bytes
    assert cached.generate(texts[-1], 10, seed=1) == uncached.generate(texts[-1], 10, seed=1)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_batch_answers_equal_predict_next_whatever_the_batch_mates(tiny_run, precision):
    model = load(tiny_run, precision=precision)
    texts = growing_texts()[::2] + ["zorblax", "a bird"]
    alone = [model.predict_next(t, 5) for t in texts]
    for size in (1, 2, 5, 8, 11):
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            assert model.predict_next_batch([(t, 5) for t in chunk]) == alone[start:start + len(chunk)]
    bad = model.predict_next_batch([("the cat", 0), ("the cat", 3)])  # one bad request in a batch
    assert isinstance(bad[0], LstmlmError) and bad[1] == model.predict_next("the cat", 3)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_micro_batched_server_answers_equal_one_at_a_time_answers(tiny_run, precision):
    from fastapi.testclient import TestClient

    from lstmlm.serving.server import Batching, create_app

    texts = growing_texts() * 3
    plain = TestClient(create_app(load(tiny_run, precision=precision), batching=Batching(enabled=False)))
    one_at_a_time = [plain.post("/v1/next", json={"text": t, "top_k": 5}).json() for t in texts]
    app = create_app(load(tiny_run, precision=precision), batching=Batching(window_ms=20, max_batch=8))
    client = TestClient(app)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda t: client.post("/v1/next", json={"text": t, "top_k": 5}).json(), texts))
    assert together == one_at_a_time  # exactly, every float
    assert max(app.state.batcher.batch_sizes) > 1 and max(app.state.batcher.batch_sizes) <= 8  # batches formed
    assert client.get("/health").json()["micro_batching"] == {"enabled": True, "window_ms": 20, "max_batch": 8}
    app.state.batcher.close()


def test_precision_rule(monkeypatch):
    assert inference_precision("float32", "bfloat16") == "float32"
    assert inference_precision("int8", "auto") == "int8"
    assert inference_precision(None, "float32") == "float32"
    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: False)
    assert inference_precision(None, "auto") == "float32"
    assert inference_precision(None, "bfloat16") == "float32"  # saved elsewhere: falls back
    with pytest.raises(LstmlmError, match="no native bfloat16"):
        inference_precision("bfloat16", "float32")  # asked for here: an error
    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: True)
    assert inference_precision(None, "auto") == "bfloat16" and inference_precision("auto", "float32") == "bfloat16"
    with pytest.raises(LstmlmError, match="^precision must be one of"):
        inference_precision("fp16", "auto")


def test_bad_num_samples(models):
    with pytest.raises(LstmlmError, match="^num_samples"):
        models["float32"].generate("the", 3, num_samples=0)
    result = models["float32"].generate("the", 3, num_samples=2)  # no seed: a random base, reported
    assert result["samples"][1]["seed"] == result["samples"][0]["seed"] + 1
