"""The language model: serialisation, incremental == full-sequence forward, tied weights, dropout at inference."""

import keras
import numpy as np
import pytest
from helpers import numpy
from keras import ops

import lstmlm
from lstmlm.config import Config
from lstmlm.model.lstm_language_model import LSTMLanguageModel, build_model

torch = pytest.importorskip("torch")

VOCAB = 23


def make(**overrides):
    values = dict(vocabulary_size=VOCAB, embedding_size=8, hidden_size=8, num_layers=2, seed=5)
    values.update(overrides)
    model = LSTMLanguageModel(**values)
    model.build((None, None))
    return model


def token_ids(batch=3, time=9, seed=0):
    return ops.convert_to_tensor(np.random.default_rng(seed).integers(0, VOCAB, (batch, time)), dtype="int32")


def test_shapes_and_call_returns_logits():
    model = make(hidden_size=10, embedding_size=6, num_layers=3)
    logits, states = model.call_with_states(token_ids())
    assert tuple(logits.shape) == (3, 9, VOCAB)
    assert len(states) == 3 and all(tuple(h.shape) == (3, 10) and tuple(c.shape) == (3, 10) for h, c in states)
    # model(x), the Keras call, gives the same logits (not forward()'s (logits, states) tuple)
    called = model(token_ids())
    assert not isinstance(called, (tuple, list))
    np.testing.assert_array_equal(numpy(called), numpy(logits))
    assert model.predict(numpy(token_ids()), verbose=0).shape == (3, 9, VOCAB)


def test_parameter_count():
    model = make(embedding_size=6, hidden_size=10, num_layers=2)
    expected = VOCAB * 6 + (6 * 40 + 10 * 40 + 40) + (10 * 40 + 10 * 40 + 40) + (10 * VOCAB + VOCAB)
    assert model.count_params() == expected


def test_config_round_trip():
    model = make(dropout=0.25, input_dropout=0.1, layer_dropout=0.2, variational=True, embedding_dropout=0.05,
                 weight_drop=0.3, init_scale=0.1, fused=False, seed=9)
    config = model.get_config()
    clone = LSTMLanguageModel.from_config(config)
    assert clone.get_config() == config
    clone.build((None, None))
    clone.set_weights(model.get_weights())
    x = token_ids()
    np.testing.assert_array_equal(numpy(clone.call_with_states(x)[0]), numpy(model.call_with_states(x)[0]))
    # the same seed gives the same initial weights
    for a, b in zip(make(seed=3).get_weights(), make(seed=3).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(make(seed=3).get_weights()[0], make(seed=4).get_weights()[0])


def test_the_keras_classes_are_registered_for_safe_mode_loading():
    """`.keras` files name the classes "lstmlm>LSTMLanguageModel" and "lstmlm>LSTM"; loading in safe mode finds
    them only through Keras' registry (filled when `import lstmlm` imports lstmlm.model.lstm_language_model and lstmlm.model.lstm)."""
    from lstmlm.model.lstm import LSTM

    for cls, name in ((LSTMLanguageModel, "lstmlm>LSTMLanguageModel"), (LSTM, "lstmlm>LSTM")):
        assert keras.saving.get_registered_name(cls) == name
        assert keras.saving.get_registered_object(name) is cls
    assert lstmlm.LSTMLanguageModel is keras.saving.get_registered_object("lstmlm>LSTMLanguageModel")


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_model_gives_identical_predictions(tmp_path, tie):
    model = make(tie_weights=tie, init_scale=0.2, dropout=0.3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is LSTMLanguageModel
    assert loaded.get_config() == model.get_config()
    x = token_ids(2, 11, seed=4)
    np.testing.assert_array_equal(numpy(loaded.call_with_states(x)[0]), numpy(model.call_with_states(x)[0]))
    np.testing.assert_array_equal(numpy(loaded(x)), numpy(model(x)))


@pytest.mark.parametrize("fused", [True, False])
def test_step_by_step_equals_full_sequence(fused):
    model = make(fused=fused, num_layers=2)
    x = token_ids(2, 12, seed=1)
    full, full_states = model.call_with_states(x)
    states, steps = None, []
    for t in range(12):
        logits, states = model.call_with_states(x[:, t:t + 1], states)
        steps.append(numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), numpy(full), rtol=1e-5, atol=1e-6)
    for (h, c), (h_full, c_full) in zip(states, full_states):
        np.testing.assert_allclose(numpy(h), numpy(h_full), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numpy(c), numpy(c_full), rtol=1e-5, atol=1e-6)
    # uneven chunks carrying the state give the same result too
    states, chunks = None, []
    for start, stop in ((0, 5), (5, 6), (6, 12)):
        logits, states = model.call_with_states(x[:, start:stop], states)
        chunks.append(numpy(logits))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), numpy(full), rtol=1e-5, atol=1e-6)
    # and the state matters: starting the second half from zeros differs
    restarted, _ = model.call_with_states(x[:, 6:])
    assert np.abs(numpy(restarted) - numpy(full)[:, 6:]).max() > 1e-4


def test_fused_and_loop_models_agree():
    fused = make(fused=True)
    loop = make(fused=False)
    loop.set_weights(fused.get_weights())
    x = token_ids(4, 10, seed=2)
    np.testing.assert_allclose(numpy(loop.call_with_states(x)[0]), numpy(fused.call_with_states(x)[0]),
                               rtol=1e-5, atol=1e-6)


def test_tied_weights_share_the_matrix():
    model = make(tie_weights=True)
    untied = make(tie_weights=False)
    names = [v.path for v in model.trainable_variables]
    assert not any("softmax/kernel" in name for name in names)
    assert untied.count_params() - model.count_params() == 8 * VOCAB  # no separate softmax matrix
    x = token_ids()
    logits, _ = model.call_with_states(x)
    # logits = h E^T + b with the embedding matrix E itself
    h = model.embedding(x)
    for layer in model.lstm_layers:
        h, _ = layer(h)
    expected = numpy(h) @ numpy(model.embedding.embeddings).T + numpy(model.output_bias)
    np.testing.assert_allclose(numpy(logits), expected, rtol=1e-5, atol=1e-6)
    # one matrix: changing the embedding changes the output layer, and the loss gradient reaches it twice
    embeddings = model.embedding.embeddings
    loss = model.call_with_states(x)[0].sum()
    (gradient,) = torch.autograd.grad(loss, [embeddings.value])
    assert gradient[np.unique(numpy(x))].abs().sum() > 0  # rows looked up as word vectors
    rows_not_in_input = sorted(set(range(VOCAB)) - set(numpy(x).reshape(-1).tolist()))
    assert gradient[rows_not_in_input].abs().sum() > 0  # those rows are used as softmax weights
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(vocabulary_size=VOCAB, embedding_size=6, hidden_size=8, num_layers=1, tie_weights=True)


def test_dropout_variants_are_identity_at_inference():
    regularised = make(dropout=0.5, input_dropout=0.4, layer_dropout=0.3, variational=True,
                       embedding_dropout=0.2, weight_drop=0.5)
    plain = make()
    plain.set_weights(regularised.get_weights())
    x = token_ids(3, 8, seed=3)
    reference = numpy(plain.call_with_states(x)[0])
    np.testing.assert_array_equal(numpy(regularised.call_with_states(x, training=False)[0]), reference)
    np.testing.assert_array_equal(numpy(regularised(x)), reference)
    # no dropout configured: training changes nothing
    np.testing.assert_array_equal(numpy(plain.call_with_states(x, training=True)[0]), reference)
    assert np.abs(numpy(regularised.call_with_states(x, training=True)[0]) - reference).max() > 1e-3


def test_variational_and_embedding_dropout_masks():
    from lstmlm.model.regularization import dropout, embedding_dropout

    seed = keras.random.SeedGenerator(0)
    x = ops.ones((4, 6, 10))
    locked = numpy(dropout(x, 0.5, seed, variational=True))
    assert set(np.unique(locked)) <= {0.0, 2.0}
    assert (locked == locked[:, :1]).all()  # one mask per sequence, shared over time
    free = numpy(dropout(x, 0.5, seed))
    assert not (free == free[:, :1]).all()
    ids = ops.convert_to_tensor([[1, 2, 1, 3, 1, 2]] * 4, dtype="int32")
    dropped = numpy(embedding_dropout(x, ids, 5, 0.5, seed))
    idx = numpy(ids)
    for word in (1, 2, 3):  # every occurrence of a word type is kept or dropped together
        values = dropped[idx == word]
        assert len(np.unique(values)) == 1 and values[0, 0] in (0.0, 2.0)
    np.testing.assert_array_equal(numpy(dropout(x, 0.0, seed)), numpy(x))


def test_build_model_from_config():
    config = Config(hidden_size=12, embedding_size=0, num_layers=3, tie_weights=True, init_scale=0.05)
    model = build_model(config, 30)
    assert (model.vocabulary_size, model.embedding_size, model.hidden_size, model.num_layers) == (30, 12, 12, 3)
    assert model.tie_weights and model.built
    assert max(np.abs(w).max() for w in model.get_weights()) <= 0.05


def test_load_model_in_a_fresh_process_after_import_lstmlm(tmp_path):
    """The documented contract: `import lstmlm` alone registers the classes keras.saving.load_model needs."""
    import subprocess
    import sys

    model = make(init_scale=0.2)
    model.save(tmp_path / "model.keras")
    x = numpy(token_ids(2, 5, seed=8))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", numpy(model.call_with_states(ops.convert_to_tensor(x))[0]))
    script = (
        "import sys, numpy as np, lstmlm, keras\n"
        "assert 'lstmlm.model.lstm_language_model' in sys.modules\n"
        f"model = keras.saving.load_model({str(tmp_path / 'model.keras')!r}, safe_mode=True)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "logits = keras.ops.convert_to_numpy(keras.ops.stop_gradient(model(x)))\n"
        f"np.testing.assert_array_equal(logits, np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print('ok', type(model).__name__)\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                               env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "ok LSTMLanguageModel"


@pytest.mark.parametrize("tie", [False, True])
def test_features_and_softmax_layer_give_the_logits(tie):
    """Evaluation's blockwise path (features_only + softmax_layer) and output_scores are the model's logits:
    features @ kernel + bias, the kernel of a tied model being the embedding matrix transposed."""
    model = make(tie_weights=tie)
    x = token_ids()
    logits, states = model.call_with_states(x)
    features, feature_states = model.call_with_states(x, features_only=True)
    assert tuple(features.shape) == (3, 9, 8)
    for (h, c), (h2, c2) in zip(states, feature_states):
        np.testing.assert_array_equal(numpy(h), numpy(h2))
        np.testing.assert_array_equal(numpy(c), numpy(c2))
    kernel, bias = model.softmax_layer()
    expected = numpy(features).astype(np.float64) @ numpy(kernel).astype(np.float64) + numpy(bias)
    np.testing.assert_allclose(numpy(logits), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(numpy(model.output_scores(features)), numpy(logits))
    if tie:
        np.testing.assert_array_equal(numpy(kernel), numpy(model.embedding.embeddings).T)


def test_softmax_layer_is_the_full_softmax_only():
    model = make(softmax="adaptive", cutoffs=[5, 12])
    with pytest.raises(ValueError, match="full softmax"):
        model.softmax_layer()
    log_probs = numpy(model.call_with_states(token_ids())[0])  # normalised log-probabilities, not logits
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
