"""Everything that is specific to the PyTorch backend lives here, each piece with a pure-Keras fallback.

- `fused_lstm`: one LSTM layer through torch's fused kernel (`torch.lstm`: oneDNN on CPU, cuDNN on CUDA),
  taking the Keras-layout weights as they are, so `.keras` files stay portable to every backend.
- `precision_context` / `resolve_precision`: bfloat16 autocast where the hardware runs it natively.
- `no_grad`: inference without building an autograd graph; `repackage_hidden`: the truncated-BPTT detach.
"""

import contextlib
import functools
import warnings

import keras

# Inside `cached_weights()` (while the weights cannot change: one call, or a loaded LanguageModel's lifetime)
# each weight is transposed to torch's layout once instead of on every step. Not keyed on tensor versions: torch's fused
# optimizers update parameters in place without bumping `_version`.
_cache = None

def is_torch():
    return keras.backend.backend() == "torch"


def fused_lstm(inputs, h, c, kernel, recurrent_kernel, bias, training):
    """One LSTM layer over a whole sequence with torch's fused kernel.

    Keras and torch use the same gate order (input, forget, cell, output), so the only change is the transpose:
    Keras kernels are (input_dim, 4 * units), torch's are (4 * units, input_dim). Keras has one bias, torch
    two (added together), so the second is zero.

    Args:
        inputs: (batch, time, input_dim) tensor.
        h, c: (batch, units) initial states.
        kernel, recurrent_kernel, bias: the Keras weights (tensors).
    Returns:
        (outputs (batch, time, units), h (batch, units), c (batch, units)).
    """
    import torch

    inference = not torch.is_grad_enabled()
    weights = [_torch_layout(kernel), _torch_layout(recurrent_kernel), bias, torch.zeros_like(bias)]
    if inference and inputs.shape[1] == 1:
        # One time step (incremental generation): oneDNN's per-call set-up costs more than the step itself
        # (measured 1.5 ms vs 0.25 ms for 2x500 at batch 1), so use torch's native kernel.
        with native_lstm():
            outputs, h, c = torch.lstm(inputs, (h[None], c[None]), weights, True, 1, 0.0, False, False, True)
    else:
        outputs, h, c = torch.lstm(inputs, (h[None], c[None]), weights, True, 1, 0.0, training, False, True)
    return outputs, h[0], c[0]


@contextlib.contextmanager
def native_lstm():
    """Within this block `torch.lstm` runs torch's native CPU kernel instead of oneDNN's (cheaper for short calls)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 on Intel GPUs when the flag is touched
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _torch_layout(weight):
    """(in, 4 * units) Keras layout -> contiguous (4 * units, in) torch layout; once per `cached_weights()`."""
    if _cache is None:
        return weight.t().contiguous()
    if id(weight) not in _cache:
        _cache[id(weight)] = (weight, weight.t().contiguous())  # holding `weight` keeps its id unique
    return _cache[id(weight)][1]


@contextlib.contextmanager
def cached_weights(store=None):
    """Within this block the weights must not change: transposed copies are made once and reused.

    Args:
        store: a dict that keeps the copies beyond the block (for an inference-only owner whose weights never
            change, such as a loaded LanguageModel); None = a fresh one for this block.
    """
    global _cache
    if _cache is not None:  # nested: the outer block's copies are still good
        yield
        return
    _cache = {} if store is None else store
    try:
        yield
    finally:
        _cache = None


@functools.cache
def bfloat16_supported():
    """True where bfloat16 matmuls run natively: a CUDA GPU with bf16, or a CPU with avx512_bf16 / AMX."""
    if not is_torch():
        return False
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from lstmlm.machine import cpu_info

    return cpu_info()["bfloat16"]


def resolve_precision(precision):
    """'auto' -> 'bfloat16' where supported, else 'float32'."""
    if precision == "auto":
        return "bfloat16" if bfloat16_supported() else "float32"
    return precision


def device_type():
    if is_torch():
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def precision_context(precision):
    """A context that runs the forward pass in `precision` ('float32' or 'bfloat16'); weights stay float32."""
    if precision == "bfloat16" and is_torch():
        import torch

        return torch.autocast(device_type(), dtype=torch.bfloat16)
    return contextlib.nullcontext()


def repackage_hidden(states):
    """Truncated BPTT: keep the LSTM states' values, cut the autograd graph behind them (awd-lstm-lm's name).

    Args:
        states: a list of (h, c) per layer, each (batch, hidden_size).
    """
    return [(h.detach(), c.detach()) for h, c in states]


def no_grad():
    if is_torch():
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def to_numpy(tensor):
    """A float32 numpy copy of a backend tensor."""
    if is_torch():
        return tensor.detach().float().cpu().numpy()
    return keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float32"))
