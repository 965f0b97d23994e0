"""bfloat16 matrix products for inference, with the weights converted and laid out for oneDNN once.

`torch.nn.functional.linear` on bfloat16 tensors re-lays the weight out for oneDNN's AMX / avx512_bf16 kernels on
every call; for the softmax layer (10,000 x 500) that costs more than the product (measured at batch 64: 9.4 ms
plain vs 1.6 ms prepacked; at batch 1: 1.05 vs 0.60 ms). `torch.ops.mkldnn._reorder_linear_weight` does it once
and `torch.ops.mkldnn._linear_pointwise` uses the result -- the pair torch's own compiler (inductor) emits for
frozen bfloat16 linears on CPU. Where torch has no oneDNN, the plain product is used: the same products,
not necessarily the same rounding.
"""

import torch


def _prepacking_available():
    try:
        weight = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16), None)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8, dtype=torch.bfloat16), weight, None, "none", [], "")
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Bfloat16Linear:
    """y = x @ weight.T + bias with bfloat16 weights and inputs (float32 sums inside oneDNN); float32 out.

    Args:
        weight: (out_features, in_features) float tensor.
        bias: (out_features,) float tensor or None (added in float32).

    Example:
        >>> layer = Bfloat16Linear(torch.tensor([[1.0, 2.0], [-3.0, 0.5]]), torch.tensor([0.0, 1.0]))
        >>> layer(torch.tensor([[1.0, 1.0]])).tolist()
        [[3.0, -1.5]]
    """

    def __init__(self, weight, bias=None):
        weight = weight.detach().to(torch.bfloat16).contiguous()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float()
        self.prepacked = _prepacking_available()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if self.prepacked else weight
        self._nbytes = weight.numel() * 2 + (0 if bias is None else 4 * self.out_features)

    def __call__(self, x):
        """x: (..., in_features) -> (..., out_features) float32."""
        shape = x.shape
        x = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.prepacked:
            y = torch.ops.mkldnn._linear_pointwise(x, self.weight, None, "none", [], "").float()
        else:
            y = torch.nn.functional.linear(x, self.weight).float()
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def nbytes(self):
        return self._nbytes
