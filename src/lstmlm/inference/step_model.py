"""The trained network as inference sees it: (word ids, LSTM state) -> (top-layer outputs, new state), and the
softmax layer applied only where a distribution is needed.

    step = make_step_model(keras_model, "int8")
    outputs, states = step.advance(ids, step.initial_states(1))   # ids (batch, time); outputs (batch, time, hidden)
    logits = step.logits(outputs[:, -1])                       # numpy float32 (batch, vocabulary)

States are a pair (h, c), each (num_layers, batch, hidden_size): torch's layout, which is also the ONNX step
model's (export.py). Two implementations:

- `TorchStepModel` (torch backend; float32, bfloat16 or int8): the weights converted once at load time to the
  precision and layout torch's kernels want, kept for the model's lifetime. float32 runs all layers in one
  `torch.lstm` call on torch's native kernel (oneDNN's per-call set-up costs more than a short block at batch 1);
  bfloat16 and int8 run the LSTM equations below with `bfloat16.Bfloat16Linear` / `quantization.Int8Linear`
  products (bfloat16 `torch.lstm` re-lays its weights out on every call) and keep the state in float32.
- `KerasStepModel` (any Keras backend, float32): the model's own layers -- the pure-Keras fallback.

With the adaptive softmax (adaptive_softmax.py) `logits` returns its normalised log-probabilities, from the
model's own layer in float32 in every precision (its products are a few times smaller than a full softmax's).

Batch invariance: int8 products are integer sums and every elementwise step treats each row alike, so a row's
numbers do not depend on the other rows of its batch or on how a text is cut into calls (`batch_invariant`).
Exceptions: with more than one torch thread and more than 32,768 elements in one elementwise op (torch's
parallel grain, e.g. 64 rows x 3 x 200 units), a row split between threads may round a sigmoid or tanh
differently in the last bit. Float matrix products are not batch invariant: BLAS picks kernels by the number of
rows (measured: up to 5e-6 apart in float32 logits between 1 and 16 rows), though not by the other rows' values
or positions.
"""

import numpy as np

from lstmlm import torch_backend

# Gate order in Keras and torch is (input, forget, cell, output); lstm_layer stores (input, forget, output, cell)
# so one sigmoid covers the first three blocks and one tanh the last.
_IFOG = (0, 1, 3, 2)


def make_step_model(model, precision="float32"):
    """The step model for `model` (an LSTMLanguageModel) in `precision` (already resolved: see precision.py)."""
    if torch_backend.is_torch():
        return TorchStepModel(model, precision)
    if precision != "float32":
        raise ValueError(f"precision {precision!r} needs the torch backend")
    return KerasStepModel(model)


def _tensor(variable):
    import torch
    from keras import ops

    return torch.as_tensor(ops.convert_to_tensor(variable)).detach().float().cpu().clone()


class TorchStepModel:
    """The network as plain torch tensors in one precision.

    Args:
        model: a built LSTMLanguageModel (torch backend).
        precision: 'float32', 'bfloat16' or 'int8'.

    Example:
        >>> import lstmlm
        >>> model = lstmlm.build_model(lstmlm.preset("tiny", max_vocabulary_size=50), 50)
        >>> step = TorchStepModel(model, "int8")
        >>> outputs, (h, c) = step.advance([[1, 2, 3]], step.initial_states(1))
        >>> tuple(outputs.shape), tuple(h.shape), step.logits(outputs[:, -1]).shape
        ((1, 3, 32), (2, 1, 32), (1, 50))
    """

    def __init__(self, model, precision="float32"):
        import torch

        from lstmlm.inference.bfloat16 import Bfloat16Linear
        from lstmlm.inference.quantization import Int8Linear

        if precision not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"unknown precision {precision!r}")
        self.precision = precision
        self.batch_invariant = precision == "int8"
        self.num_layers, self.hidden_size = model.num_layers, model.hidden_size
        self.vocabulary_size, self.softmax = model.vocabulary_size, model.softmax  # 'full' or 'adaptive'
        embeddings = _tensor(model.embedding.embeddings)  # (vocabulary, embedding)
        self.embedding = embeddings  # float32 in every precision: a lookup reads one row per word
        layers = [(_tensor(layer.kernel).t(), _tensor(layer.recurrent_kernel).t(), _tensor(layer.bias))
                  for layer in model.lstm_layers]  # torch layout: (4 * hidden, inputs)
        self.adaptive = model if model.softmax == "adaptive" else None
        if self.adaptive is not None:
            output_weight = output_bias = None
        elif model.tie_weights:
            output_weight, output_bias = embeddings, _tensor(model.output_bias)
        else:
            output_weight, output_bias = _tensor(model.output_layer.kernel).t(), _tensor(model.output_layer.bias)
        if precision == "float32":
            self.flat_weights = []
            for w_ih, w_hh, b in layers:  # torch.lstm wants two biases; Keras has one
                self.flat_weights += [w.contiguous() for w in (w_ih, w_hh, b, torch.zeros_like(b))]
            if self.adaptive is None:
                self.output_weight, self.output_bias = output_weight.contiguous(), output_bias  # (vocabulary, hidden)
        else:
            product = Int8Linear if precision == "int8" else Bfloat16Linear
            H = self.hidden_size
            order = torch.cat([torch.arange(g * H, (g + 1) * H) for g in _IFOG])
            self.layers = [(product(w_ih[order], b[order]), product(w_hh[order])) for w_ih, w_hh, b in layers]
            self.output = None if self.adaptive is not None else product(output_weight, output_bias)

    # ---- states -----------------------------------------------------------------------------------------
    def initial_states(self, batch_size):
        import torch

        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    @staticmethod
    def repeat(states, count):
        """A one-row state repeated into `count` rows."""
        return tuple(s.expand(-1, count, -1).contiguous() for s in states)

    @staticmethod
    def join(states_list):
        """Rows of several states, in order, as one batch."""
        import torch

        return tuple(torch.cat([s[i] for s in states_list], dim=1) for i in (0, 1))

    @staticmethod
    def row(states, index):
        return tuple(s[:, index:index + 1].clone() for s in states)

    @staticmethod
    def nbytes(states):
        return sum(s.numel() * s.element_size() for s in states)

    # ---- the network ------------------------------------------------------------------------------------
    def advance(self, ids, states):
        """ids: (batch, time) ints; states: (h, c). Returns (top-layer outputs (batch, time, hidden), states)."""
        import torch

        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        x = self.embedding[ids]  # (batch, time, embedding)
        with torch.no_grad():
            if self.precision != "float32":
                return self._run_layers(x, states)
            with torch_backend.native_lstm():
                outputs, h, c = torch.lstm(x, states, self.flat_weights, True, self.num_layers, 0.0, False, False, True)
            return outputs, (h, c)

    def _run_layers(self, x, states):
        import torch

        hs, cs = [], []
        for (input_product, recurrent_product), h, c in zip(self.layers, *states):
            x, h, c = lstm_layer(x, h, c, input_product, recurrent_product)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))

    def logits(self, hidden):
        """hidden: (..., hidden_size) tensor -> numpy float32 logits (..., vocabulary)."""
        import torch

        with torch.no_grad():
            if self.adaptive is not None:  # the Keras layer's weights live on the backend's device (a GPU if any)
                hidden = hidden.float().to(torch_backend.device_type())
                return self.adaptive.output_scores(hidden).cpu().numpy()
            if self.precision == "float32":
                return torch.nn.functional.linear(hidden, self.output_weight, self.output_bias).numpy()
            return self.output(hidden.float()).numpy()

    def adaptive_scores(self, hidden, targets):
        """The adaptive softmax's evaluation sums (LSTMLanguageModel.adaptive_scores), in float32."""
        with torch_backend.no_grad():
            return self.adaptive.adaptive_scores(hidden.float().to(torch_backend.device_type()), targets)

    def nbytes_per_word(self):
        """Weight bytes one word at batch 1 reads: both LSTM matrices of every layer and the softmax layer
        (the adaptive softmax's every weight, float32, and with tied weights the band weights it shares)."""
        if self.adaptive is not None:
            shared = self.adaptive.embedding.weights if self.adaptive.tie_weights else []
            output = sum(int(np.prod(v.shape)) * 4 for v in [*self.adaptive.adaptive_softmax.weights, *shared])
        elif self.precision != "float32":
            output = self.output.nbytes()
        else:
            output = sum(t.numel() * t.element_size() for t in (self.output_weight, self.output_bias))
        if self.precision != "float32":
            return sum(a.nbytes() + b.nbytes() for a, b in self.layers) + output
        return sum(t.numel() * t.element_size() for t in self.flat_weights) + output


def lstm_layer(x, h, c, input_product, recurrent_product):
    """One LSTM layer over (batch, time, inputs) in float32 with the given products; gates stored (i, f, o, g).

    Args:
        x: (batch, time, inputs); h, c: (batch, hidden) float32.
        input_product, recurrent_product: callables (rows, in) -> (rows, 4 * hidden), the first adding the bias.
    Returns:
        (outputs (batch, time, hidden), h, c).

    Every elementwise op is a plain IEEE add or multiply (no fused multiply-add), or a sigmoid/tanh over a
    view whose rows are not contiguous with each other, so torch's kernels run each row the same way
    whatever the batch size (a contiguous (batch, hidden) tensor would be one flat loop, whose scalar tail --
    rounded differently from the vector body -- falls on different elements for different batch sizes).
    """
    import torch

    batch, time, _ = x.shape
    H = h.shape[-1]
    projected = input_product(x)  # (batch, time, 4H), bias included
    outputs = torch.empty(batch, time, H)
    for t in range(time):
        gates = recurrent_product(h).add_(projected[:, t])  # (batch, 4H)
        sig = torch.sigmoid(gates[:, :3 * H])  # (batch, 3H) = input, forget, output gates
        cell = torch.tanh(gates[:, 3 * H:])
        new_c = torch.empty(batch, H + 1)[:, :H]  # row stride H + 1: see the docstring
        torch.mul(sig[:, H:2 * H], c, out=new_c)
        new_c.add_(sig[:, :H] * cell)
        torch.mul(sig[:, 2 * H:], torch.tanh(new_c), out=outputs[:, t])
        h, c = outputs[:, t], new_c
    return outputs, h.contiguous(), c.contiguous()


class KerasStepModel:
    """The same interface on the model's own Keras layers (any backend, float32): the pure-Keras fallback."""

    precision = "float32"
    batch_invariant = False

    def __init__(self, model):
        self.model = model
        self.num_layers, self.hidden_size = model.num_layers, model.hidden_size
        self.vocabulary_size, self.softmax = model.vocabulary_size, model.softmax  # 'full' or 'adaptive'

    def initial_states(self, batch_size):
        from keras import ops

        shape = (self.num_layers, batch_size, self.hidden_size)
        return ops.zeros(shape), ops.zeros(shape)

    @staticmethod
    def repeat(states, count):
        from keras import ops

        return tuple(ops.repeat(s, count, axis=1) for s in states)

    @staticmethod
    def join(states_list):
        from keras import ops

        return tuple(ops.concatenate([s[i] for s in states_list], axis=1) for i in (0, 1))

    @staticmethod
    def row(states, index):
        return tuple(s[:, index:index + 1] for s in states)

    @staticmethod
    def nbytes(states):
        return sum(int(np.prod(s.shape)) * 4 for s in states)

    def advance(self, ids, states):
        from keras import ops

        with torch_backend.no_grad():
            x = self.model.embedding.call(ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)))
            hs, cs = [], []
            for i, layer in enumerate(self.model.lstm_layers):
                x, (h, c) = layer.call(x, initial_state=(states[0][i], states[1][i]))
                hs.append(h)
                cs.append(c)
            return x, (ops.stack(hs), ops.stack(cs))

    def logits(self, hidden):
        with torch_backend.no_grad():
            return np.asarray(torch_backend.to_numpy(self.model.output_scores(hidden)), dtype=np.float32)

    def adaptive_scores(self, hidden, targets):
        with torch_backend.no_grad():
            return self.model.adaptive_scores(hidden, targets)
