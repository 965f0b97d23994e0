"""The dropout family, each a few lines through keras.random (no framework internals).

- `dropout`: standard dropout; with `variational=True` one mask per sequence shared over all time steps
  (locked / variational dropout, Gal & Ghahramani 2016, arXiv:1512.05287).
- `embedding_dropout`: drop whole word types, every occurrence of a dropped word in the batch at once
  (Gal & Ghahramani 2016, section 4; used by AWD-LSTM, Merity et al. 2017).
- `weight_drop`: DropConnect on the recurrent (hidden-to-hidden) weights, one mask per batch
  (Wan et al. 2013; Merity et al. 2017, arXiv:1708.02182).

On the torch backend `dropout` and `weight_drop` draw their masks through `torch_backend.dropout` (the same
SeedGenerator decides them; about 3x cheaper than keras.random.dropout's bernoulli + where on CPU).
"""

import keras
from keras import ops

from lstmlm import torch_backend


def dropout(x, rate, seed, variational=False):
    """x: (batch, time, features). Scaled so the expectation is unchanged."""
    if rate <= 0:
        return x
    noise_shape = (ops.shape(x)[0], 1, ops.shape(x)[2]) if variational else None
    if torch_backend.is_torch() and isinstance(seed, keras.random.SeedGenerator):
        return torch_backend.dropout(x, rate, seed, noise_shape)
    return keras.random.dropout(x, rate, noise_shape=noise_shape, seed=seed)


def embedding_dropout(vectors, token_ids, vocabulary_size, rate, seed):
    """vectors: (batch, time, size) looked up for token_ids (batch, time); one keep/drop draw per word type."""
    if rate <= 0:
        return vectors
    keep = ops.cast(keras.random.uniform((vocabulary_size,), seed=seed) >= rate, vectors.dtype) / (1.0 - rate)
    return vectors * ops.expand_dims(ops.take(keep, token_ids), -1)  # (batch, time, 1) broadcast


def weight_drop(recurrent_kernel, rate, seed):
    """recurrent_kernel: (units, 4 * units); the same dropped weights for every time step of the batch."""
    if rate <= 0:
        return recurrent_kernel
    if torch_backend.is_torch() and isinstance(seed, keras.random.SeedGenerator):
        return torch_backend.dropout(recurrent_kernel, rate, seed)
    return keras.random.dropout(recurrent_kernel, rate, seed=seed)
