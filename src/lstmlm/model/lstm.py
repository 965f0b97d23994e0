"""One LSTM layer with the same weights as `keras.layers.LSTM`, runnable through a fused kernel.

The cell is the tutorial's (model/cell.py has its equations: input squash g, gates i, f, o,
s = s_prev * f + g * i, h = tanh(s) * o).

Keras stores U for all four gates side by side as `kernel` (input_dim, 4 * units) in the order i, f, g, o,
V as `recurrent_kernel` (units, 4 * units) and b as `bias` (4 * units). This layer keeps exactly that layout
(a test copies the weights into `keras.layers.LSTM` and gets the same outputs), adds the state as an explicit
input and output (for truncated BPTT and incremental generation) and DropConnect on V (weight drop).

Execution: on the torch backend the whole sequence goes through `torch.lstm` (oneDNN / cuDNN) in
`torch_backend.fused_lstm`, with U and V kept in column-major memory order (`torch_backend.transposed_storage`:
torch's layout, read without a copy; the shapes and saved values stay Keras'); elsewhere, or with `fused=False`,
the loop below in `keras.ops` runs the equations.
"""

import keras
from keras import ops

from lstmlm import torch_backend
from lstmlm.model.cell import lstm_cell
from lstmlm.model.regularization import weight_drop as drop_weights


def lstm_loop(inputs, h, c, kernel, recurrent_kernel, bias):
    """The cell's equations (cell.py), one time step at a time, in keras.ops (any backend); the products in the
    ambient precision (bfloat16 under autocast), the gates and the state always in float32.

    Args:
        inputs: (batch, time, input_dim); h, c: (batch, units).
    Returns:
        (outputs (batch, time, units), h, c).
    """
    projected = ops.matmul(inputs, kernel) + bias  # x U + b for every step at once: (batch, time, 4 * units)
    outputs = []
    for t in range(inputs.shape[1]):
        z = projected[:, t] + ops.matmul(h, recurrent_kernel)  # (batch, 4 * units)
        # The gates and the state in float32 even when the products ran in bfloat16 (autocast): a gate's
        # derivative s * (1 - s) must not round to 0 when it saturates (torch_backend.float32_lstm says why).
        h, c, _ = lstm_cell(ops.cast(z, "float32"), c, ops.sigmoid, ops.tanh)
        outputs.append(h)
    return ops.stack(outputs, axis=1), h, c


@keras.saving.register_keras_serializable(package="lstmlm")
class LSTM(keras.layers.Layer):
    """An LSTM layer returning its full output sequence and final state.

    Args:
        units: state size.
        init_scale: if > 0, every weight starts uniform(-init_scale, init_scale) (Zaremba et al.); otherwise
            the Keras defaults (glorot-uniform U, orthogonal V, zero bias with forget-gate bias 1).
        weight_drop: DropConnect rate on the recurrent kernel during training.
        fused: use the backend's fused kernel when there is one.
        seed: seed for the weight-drop masks.

    Example:
        >>> layer = LSTM(8)
        >>> outputs, (h, c) = layer(keras.ops.zeros((2, 5, 3)))
        >>> tuple(outputs.shape), tuple(h.shape)
        ((2, 5, 8), (2, 8))
    """

    def __init__(self, units, init_scale=0.0, weight_drop=0.0, fused=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.init_scale = init_scale
        self.weight_drop = weight_drop
        self.fused = fused
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        input_dim, units = input_shape[-1], self.units
        if self.init_scale > 0:
            uniform = keras.initializers.RandomUniform(-self.init_scale, self.init_scale, seed=self.seed)
            kernel_init, recurrent_init, bias_init = uniform, uniform, uniform
        else:
            kernel_init = keras.initializers.GlorotUniform(seed=self.seed)
            recurrent_init = keras.initializers.Orthogonal(seed=self.seed)

            def bias_init(shape, dtype=None):  # Keras' unit_forget_bias: start with the forget gate open
                return ops.concatenate([ops.zeros((units,)), ops.ones((units,)), ops.zeros((2 * units,))])

        self.kernel = self.add_weight(shape=(input_dim, 4 * units), initializer=kernel_init, name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(units, 4 * units), initializer=recurrent_init,
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(4 * units,), initializer=bias_init, name="bias")
        if self.fused:  # the fused kernel reads U and V transposed: store them that way (same shapes and values)
            torch_backend.transposed_storage(self.kernel)
            torch_backend.transposed_storage(self.recurrent_kernel)

    def initial_state(self, batch_size):
        return ops.zeros((batch_size, self.units)), ops.zeros((batch_size, self.units))

    def call(self, inputs, initial_state=None, training=False):
        h, c = initial_state if initial_state is not None else self.initial_state(ops.shape(inputs)[0])
        kernel = ops.convert_to_tensor(self.kernel)
        recurrent_kernel = ops.convert_to_tensor(self.recurrent_kernel)
        bias = ops.convert_to_tensor(self.bias)
        if training and self.weight_drop > 0:
            recurrent_kernel = drop_weights(recurrent_kernel, self.weight_drop, self.seed_generator)
        if self.fused and torch_backend.is_torch():
            outputs, h, c = torch_backend.fused_lstm(inputs, h, c, kernel, recurrent_kernel, bias, training)
        else:
            outputs, h, c = lstm_loop(inputs, h, c, kernel, recurrent_kernel, bias)
        return outputs, (h, c)

    def compute_output_spec(self, inputs, initial_state=None, training=False):
        batch, time = inputs.shape[0], inputs.shape[1]
        state = keras.KerasTensor((batch, self.units), dtype=inputs.dtype)
        return keras.KerasTensor((batch, time, self.units), dtype=inputs.dtype), (state, state)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "init_scale": self.init_scale,
                "weight_drop": self.weight_drop, "fused": self.fused, "seed": self.seed}
