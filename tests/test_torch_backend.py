"""The torch-specific fast paths give the numbers of the plain formulations they replace."""

import math

import keras
import numpy as np
import pytest

from lstmlm import torch_backend
from lstmlm.config import Config
from lstmlm.model.lstm_language_model import build_model
from lstmlm.training.optimizer import load_optimizer_state, make_optimizer, optimizer_state

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch_backend.is_torch(), reason="needs the torch backend")


def logits_and_targets(rows=70, vocabulary=37, seed=0, dtype=None):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocabulary, generator=generator) * 3
    targets = torch.randint(0, vocabulary, (rows,), generator=generator)
    return (logits if dtype is None else logits.to(dtype)), targets


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cross_entropy_equals_torch_loss_and_gradient(dtype, monkeypatch):
    monkeypatch.setattr(torch_backend, "_row_block", lambda vocabulary: 16)  # several blocks and a short last one
    logits, targets = logits_and_targets(dtype=getattr(torch, dtype))
    ours = logits.clone().requires_grad_()
    reference = logits.clone().requires_grad_()
    loss, hits = torch_backend.cross_entropy(ours, targets)
    expected = torch.nn.functional.cross_entropy(reference.float(), targets)
    (loss * 7).backward()  # the loss summed over 7 time steps scales the gradient
    (expected * 7).backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ours.grad.dtype == logits.dtype
    tolerance = 1e-6 if dtype == "float32" else 1e-2  # bfloat16: rounded when stored and again when scaled by 7
    np.testing.assert_allclose(ours.grad.float().numpy(), reference.grad.float().numpy(), rtol=tolerance,
                               atol=tolerance * 7 / len(targets))
    assert hits.item() == (logits.float().argmax(-1) == targets).sum().item()  # no ties in random logits


def test_cross_entropy_counts_a_tied_maximum_and_allows_one_backward():
    logits = torch.tensor([[2.0, 2.0, 0.0], [1.0, 3.0, 3.0], [5.0, 0.0, 0.0]], requires_grad=True)
    loss, hits = torch_backend.cross_entropy(logits, torch.tensor([0, 0, 0]))
    assert hits.item() == 2  # row 0: the target ties for the top (training accuracy counts it, as before)
    expected = np.mean([math.log(2 + math.exp(-2)), math.log(1 + 2 * math.exp(2)), math.log(1 + 2 * math.exp(-5))])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():  # no gradient wanted: nothing is stored
        assert torch_backend.cross_entropy(logits, torch.tensor([0, 1, 2]))[0].requires_grad is False
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def scores_of_logits(logits, targets):
    """torch_backend.scores for given logits: features = logits, identity kernel, zero bias."""
    vocabulary = logits.shape[-1]
    return torch_backend.scores(logits, torch.eye(vocabulary), torch.zeros(vocabulary), targets)


def test_scores_equal_log_softmax_and_ranks(monkeypatch):
    monkeypatch.setattr(torch_backend, "_row_block", lambda vocabulary: 16)
    logits, targets = logits_and_targets(rows=50)
    nll, top1, top5 = scores_of_logits(logits.reshape(5, 10, -1), targets.reshape(5, 10))
    exact = logits.double()
    assert nll == pytest.approx(-exact.log_softmax(-1).gather(1, targets[:, None]).sum().item(), rel=1e-6)
    order = np.argsort(-exact.numpy(), axis=-1, kind="stable")  # no ties: top-k is the plain count
    assert top1 == (order[:, 0] == targets.numpy()).sum()
    assert top5 == (order[:, :5] == targets.numpy()[:, None]).any(-1).sum()


def test_scores_apply_the_softmax_layer_with_the_bias_in_float32():
    generator = torch.Generator().manual_seed(4)
    features, kernel = torch.randn(3, 7, 6, generator=generator), torch.randn(6, 40, generator=generator)
    bias, targets = torch.randn(40, generator=generator) * 3, torch.randint(0, 40, (3, 7), generator=generator)
    logits = (features.double() @ kernel.double() + bias.double()).reshape(21, 40)
    expected = -logits.log_softmax(-1).gather(1, targets.reshape(-1, 1)).sum().item()
    assert torch_backend.scores(features, kernel, bias, targets)[0] == pytest.approx(expected, rel=1e-6)
    if torch_backend.bfloat16_supported():  # the product in bfloat16, the bias after it in float32
        with torch_backend.precision_context("bfloat16"):
            nll = torch_backend.scores(features, kernel, bias, targets)[0]
        product = (features.reshape(21, 6).bfloat16() @ kernel.bfloat16()).double() + bias.double()
        assert nll == pytest.approx(-product.log_softmax(-1).gather(1, targets.reshape(-1, 1)).sum().item(),
                                    rel=1e-6)


def test_scores_count_ties_as_a_random_order_would():
    # target word 0 each time: rank 0 tied with 1 other; rank 0 alone; 4 above and 2 tied (half a top-5 hit)
    logits = torch.tensor([[3.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [9.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                           [1.0, 5.0, 5.0, 5.0, 5.0, 1.0, 0.0, 0.0]])
    nll, top1, top5 = scores_of_logits(logits, torch.tensor([0, 0, 0]))
    assert top1 == pytest.approx(0.5 + 1 + 0)
    assert top5 == pytest.approx(1 + 1 + 0.5)
    assert nll == pytest.approx(-logits.double().log_softmax(-1)[:, 0].sum().item(), rel=1e-6)  # float32 math


def test_dropout_masks_follow_the_seed_generator_state():
    x = torch.ones(4, 6, 10)
    first = torch_backend.dropout(x, 0.25, keras.random.SeedGenerator(5))
    again = torch_backend.dropout(x, 0.25, keras.random.SeedGenerator(5))
    other = torch_backend.dropout(x, 0.25, keras.random.SeedGenerator(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    np.testing.assert_allclose(np.unique(first.numpy()), [0.0, 1 / 0.75], rtol=1e-6)  # kept values scaled
    big = torch_backend.dropout(torch.ones(200, 500), 0.25, keras.random.SeedGenerator(1))
    assert (big == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    locked = torch_backend.dropout(x, 0.5, keras.random.SeedGenerator(1), noise_shape=(4, 1, 10))
    assert torch.equal(locked, locked[:, :1].expand_as(locked))  # one mask per sequence
    column_major = torch.ones(3, 8).t().contiguous().t()  # a kernel in transposed_storage order
    assert torch_backend.dropout(column_major, 0.5, keras.random.SeedGenerator(1)).t().is_contiguous()


def test_transposed_storage_keeps_shapes_values_and_files(tmp_path):
    config = Config(hidden_size=6, num_layers=1, init_scale=0.3, precision="float32")
    model = build_model(config, 11)
    kernels = [model.lstm_layers[0].kernel, model.lstm_layers[0].recurrent_kernel, model.output_layer.kernel]
    for variable in kernels:  # Keras shapes, torch's memory order
        assert variable.value.t().is_contiguous() and not variable.value.is_contiguous()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.lstm_layers[0].kernel.value.t().is_contiguous()
    x = keras.ops.convert_to_tensor([[1, 2, 3]], dtype="int32")
    np.testing.assert_array_equal(torch_backend.to_numpy(model(x)), torch_backend.to_numpy(loaded(x)))


def test_dense_is_matmul_plus_bias_without_copying_a_transposed_kernel():
    x = torch.randn(2, 3, 4)
    embeddings = torch.randn(9, 4)  # a tied softmax layer reads the embedding matrix transposed
    bias = torch.randn(9)
    out = torch_backend.dense(x, embeddings.t(), bias)
    np.testing.assert_allclose(out.numpy(), (x @ embeddings.t() + bias).numpy(), rtol=1e-5, atol=1e-6)
    assert out.shape == (2, 3, 9)


def test_optimizer_state_read_row_major_takes_the_parameters_strides():
    """A state file written before the kernels were stored column-major (or by numpy in C order) must resume the
    same: a fused optimizer walks parameter, gradient and state in memory order."""
    config = Config(hidden_size=5, num_layers=1, optimizer="adam", learning_rate=0.05, precision="float32")

    def setup():
        keras.utils.set_random_seed(3)
        model = build_model(config, 7)
        parameters = [v.value for v in model.trainable_variables]
        return parameters, make_optimizer(config, parameters)

    def step(parameters, optimizer, seed):
        gradients = torch.Generator().manual_seed(seed)
        optimizer.zero_grad()
        for parameter in parameters:  # laid out like the parameter, as autograd's gradients are
            parameter.grad = torch.empty_like(parameter).copy_(torch.randn(parameter.shape, generator=gradients))
        optimizer.step()

    straight, straight_optimizer = setup()
    for seed in range(3):
        step(straight, straight_optimizer, seed)
    resumed, resumed_optimizer = setup()
    step(resumed, resumed_optimizer, 0)
    arrays, groups = optimizer_state(resumed_optimizer)
    arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}  # as an older run wrote them
    fresh = make_optimizer(config, resumed)
    load_optimizer_state(fresh, arrays, groups)
    for seed in (1, 2):
        step(resumed, fresh, seed)
    assert any(not p.is_contiguous() for p in resumed)
    for a, b in zip(straight, resumed):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["adam", "sgd", "adamw"])
def test_fused_step_on_column_major_parameters_equals_the_row_major_step(name):
    """make_optimizer hands column-major parameters to torch's fused kernel as their (contiguous) transposes."""
    config = Config(optimizer=name, learning_rate=0.05, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(4, 12, generator=generator), torch.randn(12, generator=generator)]
    row_major = [torch.nn.Parameter(v.clone()) for v in values]
    column_major = [torch.nn.Parameter(v.clone()) for v in values]
    column_major[0].data = column_major[0].data.t().contiguous().t()
    optimizers = [make_optimizer(config, row_major), make_optimizer(config, column_major)]
    for step in range(3):
        gradients = [torch.randn(v.shape, generator=generator) for v in values]
        for parameters, optimizer in zip((row_major, column_major), optimizers):
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = torch.empty_like(parameter).copy_(gradient)
            optimizer.step()
    for a, b in zip(row_major, column_major):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-7)
    kernel = column_major[0]
    assert kernel.shape == (4, 12) and kernel.stride() == (1, 4) and kernel.grad.shape == (4, 12)
    for value in optimizers[1].state[kernel].values():  # the state keeps the Keras shape and the same order
        if value.dim() == 2:
            assert value.shape == (4, 12) and value.stride() == (1, 4)
