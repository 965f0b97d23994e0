"""Perplexity: exactly exp(mean negative log-probability) over every token, independent of chunking."""

import math

import numpy as np
import pytest
from keras import ops

from lstmlm.inference.evaluate import evaluate_ids
from lstmlm.model.lstm_language_model import LSTMLanguageModel
from lstmlm.data.tokenizer import EOS
from lstmlm.data.vocabulary import Vocabulary

torch = pytest.importorskip("torch")


SOFTMAX = {"full": {}, "adaptive": dict(softmax="adaptive", cutoffs=[3, 7]),
           "adaptive-tied": dict(softmax="adaptive", cutoffs=[3, 7], tie_weights=True)}


@pytest.fixture(scope="module", params=list(SOFTMAX))
def setup(request):
    """A random model and text, once per softmax kind (the adaptive ones return log-probabilities)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 12, 300)] + [EOS] * 20
    rng.shuffle(words)
    vocabulary = Vocabulary.build(words)
    model = LSTMLanguageModel(vocabulary_size=len(vocabulary), embedding_size=8, hidden_size=8, num_layers=2,
                              init_scale=0.5, seed=2, **SOFTMAX[request.param])
    model.build((None, None))
    ids = np.asarray(vocabulary.encode(words[:97]), dtype=np.int32)
    return model, vocabulary, ids


def naive(model, ids, eos_id):
    """One token at a time, carrying the state, from a leading <eos>."""
    sequence = [eos_id] + list(ids)
    states, nll, hits, top5 = None, 0.0, 0, 0
    with torch.no_grad():
        for t in range(len(sequence) - 1):
            logits, states = model.call_with_states(ops.convert_to_tensor([[sequence[t]]], dtype="int32"), states)
            row = logits[0, 0].double().numpy()
            log_probs = row - np.logaddexp.reduce(row)
            target = sequence[t + 1]
            nll -= log_probs[target]
            hits += int(np.argmax(row) == target)
            top5 += int(target in np.argsort(-row)[:5])
    n = len(sequence) - 1
    return n, nll / n, hits / n, top5 / n


def test_matches_naive_per_token_loop(setup):
    model, vocabulary, ids = setup
    tokens, loss, accuracy, top5 = naive(model, ids, vocabulary.index[EOS])
    result = evaluate_ids(model, ids, vocabulary)
    assert result["tokens"] == tokens == len(ids)  # the leading <eos> makes every token count
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert result["top5_accuracy"] == pytest.approx(top5, abs=1e-9)
    assert 1 < result["perplexity"] < len(vocabulary) * 3


def test_chunk_length_does_not_change_the_result(setup):
    model, vocabulary, ids = setup
    results = [evaluate_ids(model, ids, vocabulary, chunk_length=n) for n in (1, 7, 35, 256)]
    for result in results[1:]:
        assert result["tokens"] == results[0]["tokens"]
        assert result["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
        assert result["accuracy"] == results[0]["accuracy"]


def test_batch_size_scores_the_same_tokens_and_is_close(setup):
    model, vocabulary, ids = setup
    exact = evaluate_ids(model, ids, vocabulary)
    for batch_size in (2, 3, 5):  # 98 ids -> 97 predictions: 3 and 5 leave tokens over, which are scored too
        result = evaluate_ids(model, ids, vocabulary, evaluation_batch_size=batch_size)
        assert result["tokens"] == exact["tokens"] == len(ids)
        assert result["loss"] == pytest.approx(exact["loss"], rel=0.05)
    assert evaluate_ids(model, ids, vocabulary, evaluation_batch_size=1000)["tokens"] == len(ids)


def test_batched_streams_are_each_scored_from_zero_state(setup):
    """batch_size=2: the second half restarts from a zero state; the naive loop over each half reproduces it."""
    model, vocabulary, ids = setup
    ids = ids[:96]  # 97 ids with the <eos>: two streams of 48 predictions, nothing left over
    eos = vocabulary.index[EOS]
    full = np.concatenate([[eos], ids])
    length = (len(full) - 1) // 2
    first = naive(model, full[1:length + 1], eos)  # naive prepends eos = full[0]
    # second stream: inputs full[length:2*length], predicting full[length+1:2*length+1], from zeros
    second_nll = 0.0
    states = None
    with torch.no_grad():
        for t in range(length, 2 * length):
            logits, states = model.call_with_states(ops.convert_to_tensor([[full[t]]], dtype="int32"), states)
            row = logits[0, 0].double().numpy()
            second_nll -= row[full[t + 1]] - np.logaddexp.reduce(row)
    assert 2 * length == len(ids)
    result = evaluate_ids(model, ids, vocabulary, evaluation_batch_size=2)
    expected = (first[1] * length + second_nll) / (2 * length)
    assert result["loss"] == pytest.approx(expected, rel=1e-5)


def test_without_vocabulary_the_first_token_is_context_only(setup):
    model, vocabulary, ids = setup
    result = evaluate_ids(model, ids)
    assert result["tokens"] == len(ids) - 1
    with pytest.raises(ValueError):
        evaluate_ids(model, ids[:1])


def test_trained_run_beats_uniform(loaded_tiny):
    """On the toy grammar a trained tiny model is far better than guessing uniformly."""
    result = loaded_tiny.evaluate(split="valid")
    assert result["split"] == "valid"
    assert result["tokens"] == sum(len(line.split()) + 1 for line in open(loaded_tiny.config.valid))
    assert result["perplexity"] < len(loaded_tiny.vocabulary) / 3
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["num_unknown_words"] == 0


def test_run_trained_in_bfloat16_evaluates_on_a_machine_without_it(tiny_run, tmp_path, monkeypatch):
    """A run directory records its precision; on a machine without bfloat16 evaluation falls back to float32.
    The capability check is forced to False, so the fallback is tested on machines with bfloat16 too."""
    import json
    import shutil

    from lstmlm import torch_backend
    from lstmlm.inference.language_model import load

    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: False)
    copy = tmp_path / "bf16-run"
    shutil.copytree(tiny_run, copy)
    info = json.loads((copy / "config.json").read_text())
    info["config"]["precision"] = "bfloat16"
    (copy / "config.json").write_text(json.dumps(info))
    result = load(copy).evaluate(split="valid")
    reference = load(tiny_run).evaluate(split="valid")
    assert result["tokens"] == reference["tokens"]
    assert result["loss"] == pytest.approx(reference["loss"], rel=1e-9)


def test_bfloat16_evaluation_runs_training_s_validation_path(tiny_run, monkeypatch):
    """In bfloat16 `evaluate` scores a whole text with the Keras model under autocast (training's validation
    path, 3-4x faster than the step model's per-word loop): exactly evaluate_ids on the Keras model, and within
    bfloat16's rounding of the step model's figures. The capability check is forced to True: torch computes
    bfloat16 on any CPU (slower without avx512_bf16 / AMX), so this runs on every machine."""
    from lstmlm import torch_backend
    from lstmlm.data.corpus import read_split
    from lstmlm.inference.language_model import load

    if not torch_backend.is_torch():
        pytest.skip("needs the torch backend")  # the backend chosen, not the machine
    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: True)
    model = load(tiny_run, precision="bfloat16")
    result = model.evaluate(split="valid")
    ids, _ = read_split(model.config, "valid", model.vocabulary)
    keras_path = evaluate_ids(model.model, ids, model.vocabulary, precision="bfloat16")
    step_path = evaluate_ids(model.step_model, ids, model.vocabulary)
    assert result["tokens"] == keras_path["tokens"] == step_path["tokens"]
    assert (result["loss"], result["accuracy"]) == (keras_path["loss"], keras_path["accuracy"])
    assert result["loss"] == pytest.approx(step_path["loss"], rel=2e-2)
