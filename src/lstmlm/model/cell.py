"""The LSTM cell's equations, written once (the tutorial's notation: x input, h previous output, s cell state):

    g = tanh(b_g + x U_g + h V_g)          input squash
    i = sigmoid(b_i + x U_i + h V_i)        input gate
    f = sigmoid(b_f + x U_f + h V_f)        forget gate
    o = sigmoid(b_o + x U_o + h V_o)        output gate
    s = s_prev * f + g * i
    h = tanh(s) * o

`lstm_cell` takes the four pre-activations side by side in Keras' column order (i, f, g, o), as `x @ kernel +
h @ recurrent_kernel + bias` gives them, and any array library's sigmoid and tanh, so the Keras layer's fallback
loop (keras.ops), the gate inspector (numpy, float64) and the ONNX export (torch) run this one definition. The
step model (inference/step_model.py) keeps its own loop, reordered and laid out for batch invariance; a test pins
it to this one (tests/test_lstm.py).
"""

KERAS_GATE_ORDER = ("i", "f", "g", "o")  # the column blocks of Keras' kernel, recurrent_kernel and bias


def lstm_cell(z, s_prev, sigmoid, tanh):
    """One step of the equations above.

    Args:
        z: (..., 4 * units) pre-activations b + x U + h V, gate blocks in KERAS_GATE_ORDER.
        s_prev: (..., units) previous cell state.
        sigmoid, tanh: the array library's functions (keras.ops, numpy, torch).
    Returns:
        (h, s, (i, f, g, o)): the output, the new cell state and the gates, each (..., units).

    Example:
        >>> import numpy as np
        >>> h, s, (i, f, g, o) = lstm_cell(np.zeros(4), np.ones(1), lambda z: 1 / (1 + np.exp(-z)), np.tanh)
        >>> s, f   # all pre-activations 0: every gate is 0.5 and g is 0, so s = 1 * 0.5
        (array([0.5]), array([0.5]))
    """
    units = z.shape[-1] // 4
    i = sigmoid(z[..., :units])
    f = sigmoid(z[..., units:2 * units])
    g = tanh(z[..., 2 * units:3 * units])
    o = sigmoid(z[..., 3 * units:])
    s = s_prev * f + g * i
    h = tanh(s) * o
    return h, s, (i, f, g, o)
