"""int8 inference weights: one scale per output channel, activations quantized per row at run time, int32 sums.

What torch 2.13 offers (checked on 2.13.0): `torch.ao.quantization.quantize_dynamic` (nn.Linear / nn.LSTM onto
fbgemm kernels) still runs, but warns that `torch.ao.quantization` is deprecated and will be removed, and that the
quantized tensor dtypes it is built on (`torch.qint8`, `torch.quantize_per_tensor`) are deprecated too. Its named
successor is torchao's `quantize_(model, Int8DynamicActivationInt8WeightConfig())`, a separate package that handles
nn.Linear only. That scheme -- int8 weights with a scale per output channel, activations quantized per row (token)
when they arrive, int8 x int8 products summed in int32 -- is what this module does, on torch's own ops that are not
deprecated: oneDNN's prepacked `torch.ops.onednn.qlinear_pointwise` (the x86 int8 kernel, VNNI / AMX where the
CPU has them), else `torch._int_mm` (the op torchao calls). Both give the same integers, so the same numbers.

Why per row and integer sums: a row's result then depends on that row alone -- exactly, because int32 sums do not
round -- not on how many rows share the product (batched generation, the server's micro-batches, a prompt computed
in one call or word by word). fbgemm's dynamic linear quantizes the whole batch with one scale, so there a row's
answer would depend on its batch mates.
"""

import torch

LEVELS = 127  # symmetric int8: -127..127 (no -128, so negation is exact)


def quantize_rows(x):
    """Per-row symmetric int8 quantization.

    Args:
        x: (rows, columns) float tensor.
    Returns:
        (q (rows, columns) int8, scale (rows, 1) float32) with x ~= q * scale.

    Example:
        >>> q, scale = quantize_rows(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
        >>> q.tolist(), [round(s, 6) for s in scale.flatten().tolist()]
        ([[64, -127], [0, 0]], [0.007874, 0.0])
    """
    levels, scale = _levels(x)
    return levels.to(torch.int8), scale


def _levels(x):
    """(round(x / scale) as float32 in -127..127, scale (rows, 1)); an all-zero row gets q = 0."""
    x = x.float().contiguous()
    scale = torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True).div_(LEVELS)  # row peak / 127
    # |x / scale| <= 127 up to one rounding, so round() stays within -127..127; 0 / 0 (an all-zero row) -> 0
    return torch.round(x / scale).nan_to_num_(0.0), scale


def _onednn_available():
    try:
        torch.ops.onednn.qlinear_prepack(torch.zeros(8, 8, dtype=torch.int8), None)
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8Linear:
    """y = x @ weight.T + bias with int8 weights and per-row int8 activations.

    Args:
        weight: (out_features, in_features) float tensor (torch layout).
        bias: (out_features,) float tensor or None.
        kernel: "onednn" or "int_mm"; None = oneDNN where torch has it.

    Example:
        >>> layer = Int8Linear(torch.tensor([[1.0, 2.0], [-3.0, 0.5]]), torch.tensor([0.0, 1.0]))
        >>> [round(v, 1) for v in layer(torch.tensor([[1.0, 1.0]])).flatten().tolist()]  # exact: 3.0, -1.5
        [3.0, -1.5]
    """

    def __init__(self, weight, bias=None, kernel=None):
        weight = weight.detach().float().contiguous()  # prepacking reads the memory as row-major
        self.out_features, self.in_features = weight.shape
        self.weight, scale = quantize_rows(weight)  # (out, in) int8; (out, 1): one scale per output channel
        self.weight_scale = scale.flatten()  # (out,)
        self.bias = None if bias is None else bias.detach().float()
        self.kernel = kernel or ("onednn" if _onednn_available() else "int_mm")
        if self.kernel == "onednn":
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight, None)
            self._ones = torch.ones(self.out_features)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
        elif self.kernel != "int_mm":
            raise ValueError(f"unknown int8 kernel {kernel!r}")

    def integer_product(self, levels):
        """(rows, in) float32 integers in -127..127 -> (rows, out) float32 holding the exact int32 sums (exact
        below 2**24, i.e. for in_features <= 1040; larger sums are still rounded the same way for every row)."""
        if self.kernel == "onednn":
            # oneDNN takes unsigned activations with a zero point: q + 128 in 1..255, zero point 128.
            shifted = levels.add(128).to(torch.uint8)
            return torch.ops.onednn.qlinear_pointwise(shifted, 1.0, 128, self._packed, self._ones,
                                                      self._zero_points, None, 1.0, 0, torch.float32, "none", [], "")
        return torch._int_mm(levels.to(torch.int8), self.weight.t()).float()

    def __call__(self, x):
        """x: (..., in_features) float -> (..., out_features) float32."""
        shape = x.shape
        levels, scale = _levels(x.reshape(-1, self.in_features))
        y = self.integer_product(levels).mul_(self.weight_scale).mul_(scale)  # (rows, out)
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def nbytes(self):
        """Bytes of the int8 weights and float32 scales and bias (what one product reads)."""
        return self.weight.numel() + 4 * self.out_features * (1 if self.bias is None else 2)
