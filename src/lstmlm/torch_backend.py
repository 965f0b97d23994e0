"""Everything that is specific to the PyTorch backend lives here, each piece with a pure-Keras fallback.

- `fused_lstm`: one LSTM layer through torch's fused kernel (`torch.lstm`: oneDNN on CPU, cuDNN on CUDA),
  taking the Keras-layout weights as they are, so `.keras` files stay portable to every backend;
  `transposed_storage` lays those weights out in torch's memory order so that no step copies them.
- `dense`: the softmax layer as one `addmm` (bias fused, no copy of a transposed weight).
- `cross_entropy`: the training loss and its top-1 hits in one pass over the logits, gradient included;
  `scores`: evaluation's loss, top-1 and top-5 the same way.
- `dropout`: dropout masks from a torch.Generator seeded by a Keras SeedGenerator (same reproducibility).
- `precision_context`: bfloat16 autocast (precision.py decides where); `float32_lstm`: the LSTM outside it.
- `no_grad`: inference without building an autograd graph; `repackage_hidden`: the truncated-BPTT detach.
"""

import contextlib
import functools
import warnings

import keras

# Inside `cached_weights()` (while the weights cannot change: one call, or a loaded LanguageModel's lifetime)
# a weight that is not in `transposed_storage` order is transposed to torch's layout once instead of on every step.
# Not keyed on tensor versions: torch's fused optimizers update parameters in place without bumping `_version`.
_cache = None
# Inside `float32_lstm()`: the fused LSTM runs in float32 even under bfloat16 autocast (see there).
_float32_lstm = False


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

    if _float32_lstm and torch.is_autocast_enabled(inputs.device.type):
        with torch.autocast(inputs.device.type, enabled=False):
            return fused_lstm(inputs.float(), h.float(), c.float(), kernel, recurrent_kernel, bias, training)
    inference = not torch.is_grad_enabled()
    weights = [_torch_layout(kernel), _torch_layout(recurrent_kernel), bias, torch.zeros_like(bias)]
    autocast_dtype = torch.get_autocast_dtype(inputs.device.type)
    if (inputs.device.type == "cpu" and torch.is_autocast_enabled("cpu") and autocast_dtype == torch.bfloat16
            and not _onednn_bfloat16_lstm()):
        # A CPU without bfloat16 units (AVX2): oneDNN has no bfloat16 LSTM there, torch's own kernel computes it
        # (slowly) from explicitly cast tensors, so the bfloat16 path runs, and is tested, on every CPU.
        inputs, h, c, *weights = (t.to(autocast_dtype) for t in (inputs, h, c, *weights))
        with native_lstm():
            outputs, h, c = torch.lstm(inputs, (h[None], c[None]), weights, True, 1, 0.0, training, False, True)
        return outputs, h[0], c[0]
    if inference and inputs.shape[1] == 1:
        # One time step (incremental generation): oneDNN's per-call set-up costs more than the step itself
        # (measured 1.5 ms vs 0.25 ms for 2x500 at batch 1), so use torch's native kernel.
        with native_lstm():
            outputs, h, c = torch.lstm(inputs, (h[None], c[None]), weights, True, 1, 0.0, False, False, True)
    else:
        outputs, h, c = torch.lstm(inputs, (h[None], c[None]), weights, True, 1, 0.0, training, False, True)
    return outputs, h[0], c[0]


@functools.cache
def _onednn_bfloat16_lstm():
    """True where oneDNN runs a bfloat16 LSTM (a CPU with avx512_bf16 / AMX, or AVX-512 emulation)."""
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            weights = [torch.zeros(8, 2), torch.zeros(8, 2), torch.zeros(8), torch.zeros(8)]
            torch.lstm(torch.zeros(1, 1, 2), (torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), weights, True, 1, 0.0,
                       False, False, True)
        return True
    except RuntimeError:
        return False


@contextlib.contextmanager
def native_lstm():
    """Within this block `torch.lstm` runs torch's native CPU kernel instead of oneDNN's (cheaper for short calls)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 on Intel GPUs when the flag is touched
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def transposed_storage(variable):
    """Store a 2-D Keras weight (in, out) in column-major memory order, in place.

    Its shape, values and saved files stay Keras' (in, out); only the order of its elements in memory changes, to
    torch's (out, in) layout, so that `weight.t()` is contiguous without a copy. For the LSTM kernels (in, 4 * units)
    this means the fused kernel transposes nothing, forward or backward (at tutorial size the four per-step
    transposes and their gradients' copies cost 8% of a training step); for the softmax layer's kernel the matrix
    products run on the same layouts as torch's Linear. Gradients and optimizer state take the parameter's strides
    (see optimizer.load_optimizer_state for state read from a file).

    Args:
        variable: a built Keras variable; a no-op on other backends.
    """
    if not is_torch():
        return
    import torch

    value = variable.value
    if value.dim() == 2 and not value.t().is_contiguous():
        with torch.no_grad():
            value.data = value.data.t().contiguous().t()


def _torch_layout(weight):
    """(in, 4 * units) Keras layout -> contiguous (4 * units, in) torch layout: a view for a weight in
    `transposed_storage` order (and for a weight derived from one elementwise, as the weight-dropped kernel);
    otherwise a copy, made once per `cached_weights()`."""
    if weight.t().is_contiguous():
        return weight.t()
    if _cache is None:
        return weight.t().contiguous()
    if id(weight) not in _cache:
        _cache[id(weight)] = (weight, weight.t().contiguous())  # holding `weight` keeps its id unique
    return _cache[id(weight)][1]


@contextlib.contextmanager
def cached_weights(store=None):
    """Within this block the weights must not change: transposed (and, at inference under autocast, bfloat16)
    copies are made once and reused.

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


@contextlib.contextmanager
def float32_lstm(enabled=True):
    """Within this block (if `enabled`) `fused_lstm` runs in float32 under bfloat16 autocast; the rest of the
    model (embedding, dropout, softmax layer, loss) stays in bfloat16.

    Why: oneDNN's bfloat16 LSTM keeps its gate activations in bfloat16, and a saturated gate's sigmoid
    rounds to exactly 1.0 (or tanh to +-1), so its derivative s * (1 - s) is exactly 0 where float32 keeps a tiny,
    true value. An adaptive optimizer (Adam) rescales every parameter's gradient by its own running size, so it
    turns those tiny gradients into full-size steps: with them lost, bfloat16 + Adam learned far less than
    float32 (issue 23: PTB's LSTM gradients 10^3-10^4 times smaller after 100 steps of the tiny preset). SGD
    steps are proportional to the gradient, so the lost tiny gradients were tiny steps either way: the precision
    module (precision.py) turns this on for adaptive optimizers only.
    """
    global _float32_lstm
    previous, _float32_lstm = _float32_lstm, bool(enabled)
    try:
        yield
    finally:
        _float32_lstm = previous


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


def dense(x, kernel, bias):
    """x @ kernel + bias over the last axis of x (batch, time, in); kernel (in, out) as Keras stores it.

    On torch: in training one `addmm` (the bias added inside the matrix product; under bfloat16 autocast the logits
    stay bfloat16, half the bytes for the loss to read, as in plain PyTorch). A transposed kernel (tied embeddings)
    is read in place, not copied. At inference under autocast the product runs in bfloat16 and the bias is added in
    float32 after it: evaluation's ranks (top-1, top-5) then see float32 logits, as they did with Keras' Dense (a
    bias rounded to bfloat16 moved the top-1 accuracy of a barely trained WikiText-2 model by 3%). Elsewhere:
    keras.ops.
    """
    if not is_torch():
        return keras.ops.matmul(x, kernel) + bias
    import torch

    kernel, bias = keras.ops.convert_to_tensor(kernel), keras.ops.convert_to_tensor(bias)  # Keras variables
    rows = x.reshape(-1, x.shape[-1])  # (batch * time, in)
    if torch.is_grad_enabled() or not torch.is_autocast_enabled(rows.device.type):
        logits = torch.addmm(bias, rows, kernel)
    else:  # bfloat16 product (one copy of the kernel per `cached_weights()` block), float32 bias and logits
        dtype = torch.get_autocast_dtype(rows.device.type)
        logits = torch.mm(rows.to(dtype), _cast(kernel, dtype)).float().add_(bias)
    return logits.reshape(*x.shape[:-1], kernel.shape[-1])


def _cast(weight, dtype):
    """weight in `dtype`; inside `cached_weights()` converted once (keyed on its memory, which holds still)."""
    if _cache is None:
        return weight.to(dtype)
    key = ("cast", weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()), dtype)
    if key not in _cache:
        _cache[key] = (weight, weight.to(dtype))  # holding `weight` keeps its memory from being reused
    return _cache[key][1]


def dropout(x, rate, seed_generator, noise_shape=None):
    """Inverted dropout (kept values scaled by 1 / (1 - rate)); `noise_shape` broadcasts one mask (variational).

    The mask is drawn from a torch.Generator seeded by the next value of the Keras SeedGenerator, as
    keras.random.dropout seeds its own: masks are a function of that generator's state (so of seed, epoch and
    batch in training). It compares uniform numbers with the keep probability instead of calling bernoulli, which
    is 4x slower on CPU, and applies the mask as one multiplication (the backward pass is one more).
    """
    import torch

    first, second = (int(v) for v in seed_generator.next())
    generator = torch.Generator(device=x.device)
    generator.manual_seed((first + second) & 0xFFFFFFFF)
    keep = 1.0 - rate
    if noise_shape is None:  # laid out like x, so x * scale keeps x's memory order (transposed_storage weights)
        noise = torch.empty_like(x, dtype=torch.float32)
    else:
        noise = torch.empty(noise_shape, dtype=torch.float32, device=x.device)
    noise.uniform_(generator=generator)
    scale = (noise < keep).to(x.dtype).mul_(1.0 / keep)
    return x * scale


def cross_entropy(logits, targets):
    """Mean cross-entropy in nats and the number of top-1 hits of (n, vocabulary) logits against (n,) targets.

    One pass over the logits, in row blocks that stay in cache, computes the loss (float32 arithmetic whatever the
    logits' dtype), the hits (the target's logit is the row's maximum, ties included) and the gradient,
    (softmax - one-hot) / n, stored in the logits' dtype for the backward pass. Torch's cross_entropy on bfloat16
    logits writes float32 copies of the logits, their log-softmax and its gradient, then casts that back.

    Args:
        logits: (n, vocabulary) float32 or bfloat16 tensor.
        targets: (n,) int64 tensor.
    Returns:
        (loss: float32 scalar tensor with a gradient, hits: int64 scalar tensor without one).
    """
    return _cross_entropy_function().apply(logits, targets)


def _row_block(vocabulary_size):
    return max(1, (1 << 18) // vocabulary_size)  # rows per block: 1 MiB of float32


def _cross_entropy_forward(logits, targets, gradient=None):
    """Summed loss (float64) and top-1 hits (int64) as tensors; fills `gradient` (like logits) with
    (softmax - one-hot) / n if given. About a dozen operations per row block and no synchronisation: the
    per-row results go to buffers summed once at the end."""
    import torch

    count, vocabulary = logits.shape
    step = _row_block(vocabulary)
    row_loss = torch.empty(count, dtype=torch.float32, device=logits.device)
    row_hit = torch.empty(count, dtype=torch.bool, device=logits.device)
    minus = torch.full((min(step, count), 1), -1.0 / count, dtype=logits.dtype, device=logits.device)
    for start in range(0, count, step):
        rows = slice(start, start + step)
        z = logits[rows].float()  # (rows, vocabulary); a view when the logits are float32
        target = targets[rows, None]  # (rows, 1)
        top = z.amax(-1, keepdim=True)
        exp = torch.sub(z, top).exp_()
        sums = exp.sum(-1, keepdim=True)
        target_logit = z.gather(1, target)
        torch.sub(sums.log().add_(top), target_logit, out=row_loss[rows, None])  # log-sum-exp - target logit
        torch.ge(target_logit, top, out=row_hit[rows, None])  # the target's logit is the row's maximum
        if gradient is not None:
            part = gradient[rows]
            torch.mul(exp, sums.mul_(count).reciprocal_(), out=part)  # softmax / n, in the logits' dtype
            part.scatter_add_(1, target, minus[:len(target)])  # - one-hot / n
    return row_loss.sum(dtype=torch.float64), row_hit.sum()


def scores(features, kernel, bias, targets):
    """Evaluation sums of the logits features @ kernel + bias against targets: (negative log-likelihood in nats,
    top-1 hits, top-5 hits), as Python floats.

    Args:
        features: (..., size) softmax-layer inputs; kernel (size, vocabulary); bias (vocabulary,).
        targets: (...) int ids.

    The matrix product runs once for all rows (under autocast in bfloat16, without the bias: the product's own
    rounding, as in training); then, in row blocks that stay in cache, the bias is added in float32, the
    log-sum-exp taken in float32, and the target's rank found by comparisons instead of a top-k: `above` =
    logits greater than the target's over every row, `tied` = logits equal to it (itself included) only in rows
    with above < 5, the only ones that can score. A top-k hit counts as its probability under a random order of
    the tied words, min(1, max(0, k - above) / tied). No float32 copy of all the logits is written.
    """
    import torch

    kernel, bias = keras.ops.convert_to_tensor(kernel), keras.ops.convert_to_tensor(bias)  # Keras variables
    rows = features.reshape(-1, features.shape[-1])  # (n, size)
    targets = targets.reshape(-1, 1).long()
    if torch.is_autocast_enabled(rows.device.type):
        dtype = torch.get_autocast_dtype(rows.device.type)
        product, add_bias = torch.mm(rows.to(dtype), _cast(kernel, dtype)), True  # (n, vocabulary)
    else:
        product, add_bias = torch.addmm(bias, rows, kernel), False
    nll = torch.zeros((), dtype=torch.float64, device=rows.device)
    top1 = torch.zeros((), dtype=torch.float64, device=rows.device)
    top5 = torch.zeros((), dtype=torch.float64, device=rows.device)
    step = _row_block(product.shape[-1])
    for start in range(0, product.shape[0], step):
        block = product[start:start + step].float()  # (rows, vocabulary): a copy, or a view for float32
        if add_bias:
            block = block.add_(bias)  # the product is bfloat16 here, so the block is its own float32 copy
        target = targets[start:start + step]  # (rows, 1)
        target_logit = block.gather(1, target)
        nll += (torch.logsumexp(block, -1) - target_logit[:, 0]).sum(dtype=torch.float64)
        above = (block > target_logit).sum(-1)
        near = above < 5  # rows whose target can be in the top 5
        if near.any():
            above = above[near].double()
            tied = (block[near] >= target_logit[near]).sum(-1).double() - above  # the target included
            top1 += ((1 - above).clamp(min=0) / tied).clamp(max=1).sum()
            top5 += ((5 - above).clamp(min=0) / tied).clamp(max=1).sum()
    return float(nll), float(top1), float(top5)


@functools.cache
def _cross_entropy_function():
    import torch

    class CrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, targets):
            gradient = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
            total, hits = _cross_entropy_forward(logits, targets, gradient)
            ctx.gradient = gradient  # not save_for_backward: backward scales it in place, once
            ctx.mark_non_differentiable(hits)
            return (total / max(1, logits.shape[0])).float(), hits

        @staticmethod
        def backward(ctx, grad_loss, grad_hits):
            gradient, ctx.gradient = ctx.gradient, None
            if gradient is None:
                raise RuntimeError("cross_entropy: a second backward pass (its gradient is used up by the first)")
            scale = float(grad_loss)  # 1, or num_steps for the loss summed over time
            return (gradient if scale == 1.0 else gradient.mul_(scale)), None

    return CrossEntropy
