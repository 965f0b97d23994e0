"""The LSTM layer: fused torch kernel == pure-Keras loop == keras.layers.LSTM with the same weights."""

import keras
import numpy as np
import pytest
from helpers import numpy
from keras import ops

from lstmlm import torch_backend
from lstmlm.model.lstm import LSTM, lstm_loop

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch_backend.is_torch(), reason="needs the torch backend")

BATCH, TIME, INPUT, UNITS = 3, 7, 5, 6


def pair(init_scale=0.0, weight_drop=0.0, seed=3):
    fused = LSTM(UNITS, init_scale=init_scale, weight_drop=weight_drop, fused=True, seed=seed)
    loop = LSTM(UNITS, init_scale=init_scale, weight_drop=weight_drop, fused=False, seed=seed + 100)
    fused.build((None, None, INPUT))
    loop.build((None, None, INPUT))
    loop.set_weights(fused.get_weights())
    return fused, loop


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, TIME, INPUT)).astype("float32")
    h = rng.normal(size=(BATCH, UNITS)).astype("float32") * 0.5
    c = rng.normal(size=(BATCH, UNITS)).astype("float32") * 0.5
    return x, h, c


def reference_numpy(x, h, c, kernel, recurrent_kernel, bias):
    """The docstring's equations in plain numpy, gate order i, f, g, o."""
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = c * sigmoid(f) + np.tanh(g) * sigmoid(i)
        h = np.tanh(c) * sigmoid(o)
        outputs.append(h)
    return np.stack(outputs, 1), h, c


@pytest.mark.parametrize("init_scale", [0.0, 0.3])
def test_fused_and_loop_agree_with_numpy_reference(init_scale):
    fused, loop = pair(init_scale)
    x, h, c = inputs()
    state = (ops.convert_to_tensor(h), ops.convert_to_tensor(c))
    out_f, (h_f, c_f) = fused(x, initial_state=state)
    out_l, (h_l, c_l) = loop(x, initial_state=state)
    ref_out, ref_h, ref_c = reference_numpy(x.astype(np.float64), h, c, *[w.astype(np.float64)
                                                                            for w in fused.get_weights()])
    for ours_f, ours_l, ref in ((out_f, out_l, ref_out), (h_f, h_l, ref_h), (c_f, c_l, ref_c)):
        np.testing.assert_allclose(numpy(ours_f), numpy(ours_l), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numpy(ours_f), ref, rtol=1e-4, atol=1e-5)
    assert numpy(out_f).shape == (BATCH, TIME, UNITS)
    np.testing.assert_array_equal(numpy(out_f)[:, -1], numpy(h_f))  # last output is the final h


def test_zero_initial_state_by_default():
    fused, loop = pair()
    x, _, _ = inputs(1)
    zeros = (ops.zeros((BATCH, UNITS)), ops.zeros((BATCH, UNITS)))
    for layer in (fused, loop):
        np.testing.assert_allclose(numpy(layer(x)[0]), numpy(layer(x, initial_state=zeros)[0]), atol=0)


def test_fused_and_loop_gradients_agree():
    fused, loop = pair(init_scale=0.2)
    x, h, c = inputs(2)
    weights_out = np.random.default_rng(5).normal(size=(BATCH, TIME, UNITS)).astype("float32")
    grads = []
    for layer in (fused, loop):
        xt = torch.tensor(x, requires_grad=True)
        ht = torch.tensor(h, requires_grad=True)
        ct = torch.tensor(c, requires_grad=True)
        out, (h1, c1) = layer(xt, initial_state=(ht, ct), training=True)
        loss = (out * torch.tensor(weights_out)).sum() + (h1 ** 2).sum() + (3 * c1).sum()
        variables = [layer.kernel.value, layer.recurrent_kernel.value, layer.bias.value]
        grads.append([g.numpy() for g in torch.autograd.grad(loss, [xt, ht, ct, *variables])])
    for g_fused, g_loop in zip(*grads):
        assert np.abs(g_fused).max() > 0
        np.testing.assert_allclose(g_fused, g_loop, rtol=1e-4, atol=1e-5)


def test_same_outputs_as_keras_lstm():
    fused, loop = pair()
    stock = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    stock.build((None, None, INPUT))
    assert [tuple(w.shape) for w in stock.get_weights()] == [tuple(w.shape) for w in fused.get_weights()]
    stock.set_weights(fused.get_weights())
    x, h, c = inputs(3)
    out_s, h_s, c_s = stock(x, initial_state=[h, c])
    for layer in (fused, loop):
        out, (h1, c1) = layer(x, initial_state=(ops.convert_to_tensor(h), ops.convert_to_tensor(c)))
        np.testing.assert_allclose(numpy(out), numpy(out_s), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numpy(h1), numpy(h_s), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(numpy(c1), numpy(c_s), rtol=1e-5, atol=1e-6)


def test_default_initialisation_matches_keras_conventions():
    layer = LSTM(4, seed=0)
    layer.build((None, None, 3))
    bias = ops.convert_to_numpy(layer.bias)
    np.testing.assert_array_equal(bias, [0] * 4 + [1] * 4 + [0] * 8)  # unit forget bias
    recurrent = ops.convert_to_numpy(layer.recurrent_kernel)  # orthogonal (4, 16): orthonormal rows
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(4), atol=1e-5)
    scaled = LSTM(4, init_scale=0.05, seed=0)
    scaled.build((None, None, 3))
    for weight in scaled.get_weights():
        assert np.abs(weight).max() <= 0.05 and np.abs(weight).max() > 0.01


@pytest.mark.parametrize("fused_path", [True, False])
def test_weight_drop_only_in_training(fused_path):
    plain = LSTM(UNITS, fused=fused_path, seed=1)
    dropped = LSTM(UNITS, weight_drop=0.5, fused=fused_path, seed=1)
    plain.build((None, None, INPUT))
    dropped.build((None, None, INPUT))
    dropped.set_weights(plain.get_weights())
    x, h, c = inputs(4)
    state = (ops.convert_to_tensor(h), ops.convert_to_tensor(c))
    reference = numpy(plain(x, initial_state=state)[0])
    np.testing.assert_array_equal(numpy(dropped(x, initial_state=state, training=False)[0]), reference)
    np.testing.assert_array_equal(numpy(plain(x, initial_state=state, training=True)[0]), reference)
    trained = numpy(dropped(x, initial_state=state, training=True)[0])
    assert np.abs(trained - reference).max() > 1e-3
    # the drop hits only the recurrent weights: the first step from a zero state is unaffected
    zero = (ops.zeros((BATCH, UNITS)), ops.zeros((BATCH, UNITS)))
    np.testing.assert_allclose(numpy(dropped(x, initial_state=zero, training=True)[0])[:, 0],
                               numpy(plain(x, initial_state=zero)[0])[:, 0], rtol=1e-5, atol=1e-6)


def test_lstm_loop_function_directly():
    x, h, c = inputs(6)
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(INPUT, 4 * UNITS)).astype("float32") * 0.3
    recurrent = rng.normal(size=(UNITS, 4 * UNITS)).astype("float32") * 0.3
    bias = rng.normal(size=(4 * UNITS,)).astype("float32") * 0.1
    out, h1, c1 = lstm_loop(*[ops.convert_to_tensor(a) for a in (x, h, c, kernel, recurrent, bias)])
    ref_out, ref_h, ref_c = reference_numpy(x, h, c, kernel, recurrent, bias)
    np.testing.assert_allclose(numpy(out), ref_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy(c1), ref_c, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    layer = LSTM(5, init_scale=0.1, weight_drop=0.2, fused=False, seed=4, name="lstm_x")
    config = layer.get_config()
    assert {k: config[k] for k in ("units", "init_scale", "weight_drop", "fused", "seed", "name")} == {
        "units": 5, "init_scale": 0.1, "weight_drop": 0.2, "fused": False, "seed": 4, "name": "lstm_x"}
    assert LSTM.from_config(config).get_config() == config


def test_step_model_loop_is_the_one_cell():
    """inference/step_model.py keeps its own loop (gates reordered i, f, o, g and laid out for batch invariance):
    it must compute model/cell.py's equations, to float32 rounding, from the same weights and states."""
    from lstmlm.inference.step_model import _IFOG, lstm_layer
    from lstmlm.model.cell import lstm_cell

    x, h, c = inputs(seed=5)
    rng = np.random.default_rng(6)
    kernel, recurrent_kernel = rng.normal(size=(INPUT, 4 * UNITS)), rng.normal(size=(UNITS, 4 * UNITS))
    bias = rng.normal(size=4 * UNITS)

    def ifog(weight):  # the step model's gate order, as TorchStepModel stores its weights
        blocks = np.split(weight, 4, axis=-1)
        return torch.as_tensor(np.concatenate([blocks[k] for k in _IFOG], axis=-1), dtype=torch.float32)

    U, V, b = ifog(kernel), ifog(recurrent_kernel), ifog(bias)
    outputs, h_step, c_step = lstm_layer(torch.as_tensor(x), torch.as_tensor(h), torch.as_tensor(c),
                                         lambda rows: rows @ U + b, lambda rows: rows @ V)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h_cell, c_cell, expected = h.astype(np.float64), c.astype(np.float64), []
    for t in range(TIME):
        h_cell, c_cell, _ = lstm_cell(x[:, t] @ kernel + h_cell @ recurrent_kernel + bias, c_cell, sigmoid, np.tanh)
        expected.append(h_cell)
    np.testing.assert_allclose(outputs.numpy(), np.stack(expected, 1), atol=1e-5)
    np.testing.assert_allclose(c_step.numpy(), c_cell, atol=1e-5)


def test_cell_is_the_tutorials_equations():
    """model/cell.py against the equations written out by hand (the tutorial's s = s_prev * f + g * i)."""
    from lstmlm.model.cell import lstm_cell

    rng = np.random.default_rng(7)
    z, s_prev = rng.normal(size=(2, 12)), rng.normal(size=(2, 3))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, s, (i, f, g, o) = lstm_cell(z, s_prev, sigmoid, np.tanh)
    np.testing.assert_allclose(i, sigmoid(z[:, 0:3]))
    np.testing.assert_allclose(g, np.tanh(z[:, 6:9]))
    np.testing.assert_allclose(s, s_prev * sigmoid(z[:, 3:6]) + np.tanh(z[:, 6:9]) * sigmoid(z[:, 0:3]))
    np.testing.assert_allclose(h, np.tanh(s) * sigmoid(z[:, 9:12]))
