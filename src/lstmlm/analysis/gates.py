"""The LSTM cell in plain numpy (float64), run on a trained model's weights to expose every gate.

The equations are model/cell.py's (the tutorial's notation: x = input, h_prev = previous output, s = internal
cell state; g the input squash, i, f, o the gates, s = s_prev * f + g * i, h = tanh(s) * o), run here in float64.
The trained layers hold U, V and b in the Keras layout: `kernel` (input_dim, 4 * units), `recurrent_kernel`
(units, 4 * units) and `bias` (4 * units), each the four gates side by side in the order i, f, g, o.
`split_weights` cuts them into U_i, U_f, ... so each gate's pre-activation reads like its equation.

Why a second run of the cell: the trained model runs through torch's fused kernel, which returns only h (and the
final s). This loop is slow but shows i, f, g, o and s at every step, and a test checks it reproduces the fused
kernel's h and s to 1e-5, so what the inspector draws is what the model computes.
"""

import numpy as np
from keras import ops

from lstmlm.model.cell import KERAS_GATE_ORDER, lstm_cell
TRACE_NAMES = ("input_gate", "forget_gate", "cell_input", "output_gate", "cell_state", "hidden_state")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def to_float64(variable):
    """A Keras variable or tensor as a float64 numpy array."""
    return np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)


def split_weights(layer):
    """The layer's weights cut into the tutorial's per-gate matrices.

    Args:
        layer: a built `lstmlm.model.lstm.LSTM` or `keras.layers.LSTM` (anything with kernel, recurrent_kernel, bias).
    Returns:
        dict with U_i, U_f, U_g, U_o (input_dim, units), V_i ... V_o (units, units), b_i ... b_o (units,).

    Example:
        >>> from lstmlm.model.lstm import LSTM
        >>> layer = LSTM(4); layer.build((None, None, 3))
        >>> weights = split_weights(layer)
        >>> weights["U_f"].shape, weights["V_f"].shape, weights["b_f"].shape
        ((3, 4), (4, 4), (4,))
    """
    kernel = to_float64(layer.kernel)  # (input_dim, 4 * units)
    recurrent_kernel = to_float64(layer.recurrent_kernel)  # (units, 4 * units)
    bias = to_float64(layer.bias)  # (4 * units,)
    weights = {}
    for name, U, V, b in zip(KERAS_GATE_ORDER, np.split(kernel, 4, axis=1), np.split(recurrent_kernel, 4, axis=1),
                             np.split(bias, 4)):
        weights[f"U_{name}"], weights[f"V_{name}"], weights[f"b_{name}"] = U, V, b
    return weights


def lstm_step(x, h_prev, s_prev, weights):
    """One time step of the cell (model/cell.py).

    Args:
        x: (input_dim,) input; h_prev, s_prev: (units,) previous hidden and cell state.
        weights: the dict from `split_weights`.
    Returns:
        dict of (units,) arrays: input_gate, forget_gate, cell_input, output_gate, cell_state, hidden_state.

    Example:
        >>> w = {f"{m}_{n}": np.zeros((1, 1)) for m in "UV" for n in "ifgo"} | {f"b_{n}": np.zeros(1) for n in "ifgo"}
        >>> lstm_step(np.zeros(1), np.zeros(1), np.ones(1), w)["cell_state"]  # forget gate 0.5 halves s
        array([0.5])
    """
    W = weights
    z = np.concatenate([W[f"b_{n}"] + x @ W[f"U_{n}"] + h_prev @ W[f"V_{n}"] for n in KERAS_GATE_ORDER])  # (4 units,)
    h, s, (i, f, g, o) = lstm_cell(z, s_prev, sigmoid, np.tanh)
    return {"input_gate": i, "forget_gate": f, "cell_input": g, "output_gate": o, "cell_state": s, "hidden_state": h}


def run_layer(inputs, weights, h=None, s=None):
    """The reference cell over a sequence.

    Args:
        inputs: (time, input_dim) float array.
        weights: the dict from `split_weights`.
        h, s: (units,) initial hidden and cell state; None = zeros (as the model starts).
    Returns:
        dict name -> (time, units) array for every name in TRACE_NAMES.
    """
    units = weights["b_i"].shape[0]
    h = np.zeros(units) if h is None else np.asarray(h, dtype=np.float64)
    s = np.zeros(units) if s is None else np.asarray(s, dtype=np.float64)
    steps = []
    for x in np.asarray(inputs, dtype=np.float64):
        step = lstm_step(x, h, s, weights)
        h, s = step["hidden_state"], step["cell_state"]
        steps.append(step)
    return {name: np.stack([step[name] for step in steps]) if steps else np.zeros((0, units))
            for name in TRACE_NAMES}


def trace_gates(model, token_ids):
    """Every gate of every LSTM layer of a language model, at every position of one sequence.

    Layer 1 reads the word vectors (the embedding rows of token_ids); layer k + 1 reads layer k's hidden_state.
    The state starts at zero, as `model.call_with_states(token_ids)` does. No dropout: this is the model at inference.

    Args:
        model: an `LSTMLanguageModel` (e.g. `lstmlm.inference.language_model.load(run_dir).model`).
        token_ids: sequence of word ids, length time.
    Returns:
        a list with one dict per layer (first layer first), name -> (time, units) float64 array, names as
        TRACE_NAMES.

    Example:
        >>> from lstmlm.model.lstm_language_model import LSTMLanguageModel
        >>> model = LSTMLanguageModel(vocabulary_size=20, embedding_size=5, hidden_size=6, num_layers=2)
        >>> model.build()
        >>> layers = trace_gates(model, [1, 4, 2])
        >>> len(layers), layers[-1]["forget_gate"].shape
        (2, (3, 6))
    """
    embeddings = to_float64(model.embedding.embeddings)  # (vocabulary_size, embedding_size)
    x = embeddings[np.asarray(token_ids, dtype=np.int64)]  # (time, embedding_size)
    traces = []
    for layer in model.lstm_layers:
        trace = run_layer(x, split_weights(layer))
        traces.append(trace)
        x = trace["hidden_state"]  # (time, units): the next layer's input
    return traces
