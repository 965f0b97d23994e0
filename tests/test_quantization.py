"""int8 and bfloat16 products: both int8 kernels give the same numbers, and the products are the matrix's."""

import torch

from lstmlm.inference.bfloat16 import Bfloat16Linear
from lstmlm.inference.quantization import Int8Linear, quantize_rows


def test_int8_products_of_transposed_weights():
    """A weight given as a transposed view (the softmax layer's Keras kernel) is quantized as the matrix it is."""
    import torch

    from lstmlm.inference.quantization import Int8Linear

    weight = torch.randn(16, 40).t()  # (40, 16), not contiguous
    x = torch.randn(3, 16)
    for kernel in ("onednn", "int_mm"):
        got = Int8Linear(weight, kernel=kernel)(x)
        assert torch.allclose(got, x @ weight.t(), atol=0.05 * float((x @ weight.t()).abs().max()))


def test_the_two_int8_kernels_give_identical_numbers_and_rows_are_independent():
    torch.manual_seed(0)
    weight, bias, x = torch.randn(37, 24), torch.randn(37), torch.randn(9, 24)
    onednn, int_mm = Int8Linear(weight, bias, kernel="onednn"), Int8Linear(weight, bias, kernel="int_mm")
    assert torch.equal(onednn(x), int_mm(x))
    assert torch.equal(torch.cat([onednn(x[i:i + 1]) for i in range(9)]), onednn(x))  # exact, row by row


def test_quantize_rows_round_trip():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -3.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert torch.allclose(q.float() * scale, x, atol=float(scale.max()) / 2)
    assert q[1].abs().sum() == 0


def test_bfloat16_products():
    torch.manual_seed(1)
    weight, bias, x = torch.randn(50, 32), torch.randn(50), torch.randn(4, 32)
    got = Bfloat16Linear(weight, bias)(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, x @ weight.t() + bias, atol=0.02 * float((x @ weight.t()).abs().max()))

