"""The language model: Embedding -> LSTM x num_layers -> Dropout -> Dense(vocabulary) logits (or an adaptive softmax).

This is the tutorial's network (Embedding 500 -> LSTM 500 -> LSTM 500 -> Dropout 0.5 -> Dense(10,000)) with
three changes that do not alter its mathematics: the softmax layer is applied to the 3-D tensor directly
(TimeDistributed is the same function, 1.5x slower in Keras 3); it returns logits, and the loss applies the
softmax (sparse cross-entropy on logits = categorical cross-entropy on one-hot targets); and the LSTM state is
an explicit input and output, so training can carry it across batches and generation can feed one word at a time
(`call_with_states`; not named `forward`, which on the torch backend is torch.nn.Module's dispatch to `call`).
Optional regularisation from the literature is off unless configured (see regularization.py).

With `stateful=True` (opt-in, for Keras' `fit()` on state-carrying streams: docs/keras.md) `call` starts from the
LSTM states its previous call ended with, kept in non-trainable variables (as Keras' `stateful=True` RNNs do), and
`reset_states()` sets them to zero; `call_with_states` and every lstmlm path ignore them.

With `softmax="adaptive"` the Dense layer is an AdaptiveSoftmax (adaptive_softmax.py): `call_with_states` then
returns normalised log-probabilities instead of logits (every consumer applies a softmax or log-softmax, which
leaves log-probabilities unchanged), and training reads `target_log_probabilities`, which computes only each
target's cluster. Tied weights then make the embedding an AdaptiveInput whose band weights the softmax shares.

The full softmax layer is `softmax_layer()` = (kernel, bias), applied by `torch_backend.dense` (one addmm on torch,
its kernel stored in torch's memory order by `transposed_storage`: shapes and files stay Keras'); exact evaluation
reads the softmax layer's input (`features_only=True`) and applies the layer itself, blockwise.
"""

import numbers

import keras
import numpy as np
from keras import ops

from lstmlm import torch_backend
from lstmlm.model.adaptive_softmax import AdaptiveInput, AdaptiveSoftmax, resolve_cutoffs
from lstmlm.model.lstm import LSTM
from lstmlm.model.regularization import dropout, embedding_dropout


@keras.saving.register_keras_serializable(package="lstmlm")
class LSTMLanguageModel(keras.Model):
    """Next-word model over a fixed vocabulary.

    Args:
        vocabulary_size: number of word ids.
        embedding_size: word vector size.
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM layers.
        dropout: rate on the last LSTM output (the tutorial's Dropout layer).
        input_dropout: rate on the word vectors.
        layer_dropout: rate between LSTM layers.
        variational: share each dropout mask over the time steps of a sequence.
        embedding_dropout: rate of dropping whole word types.
        weight_drop: DropConnect rate on the recurrent weights.
        tie_weights: use the embedding matrix as the softmax weights (needs embedding_size == hidden_size);
            with the adaptive softmax, adaptive input embeddings sharing the softmax's band weights.
        init_scale: uniform(-s, s) initialisation of every weight if > 0, else Keras defaults.
        fused: use the backend's fused LSTM kernel where there is one.
        seed: initialisation and dropout seed.
        softmax: 'full' (Dense over the vocabulary, logits) or 'adaptive' (AdaptiveSoftmax, log-probabilities).
        cutoffs: the adaptive softmax's cluster boundaries (word ids, ascending).
        stateful: `call` (what `fit()`, `evaluate()` and `predict()` run) carries the LSTM states from one batch
            to the next; needs a fixed batch size, given by `build((batch_size, None))`.

    Example:
        >>> model = LSTMLanguageModel(vocabulary_size=50, embedding_size=8, hidden_size=8, num_layers=2)
        >>> logits, states = model.call_with_states(keras.ops.zeros((3, 7), dtype="int32"))
        >>> tuple(logits.shape), len(states)
        ((3, 7, 50), 2)
    """

    def __init__(self, vocabulary_size, embedding_size, hidden_size, num_layers, dropout=0.0, input_dropout=0.0,
                 layer_dropout=0.0, variational=False, embedding_dropout=0.0, weight_drop=0.0, tie_weights=False,
                 init_scale=0.0, fused=True, seed=1, softmax="full", cutoffs=None, stateful=False, **kwargs):
        super().__init__(**kwargs)
        arguments = dict(vocabulary_size=vocabulary_size, embedding_size=embedding_size, hidden_size=hidden_size,
                         num_layers=num_layers, dropout=dropout, input_dropout=input_dropout,
                         layer_dropout=layer_dropout, variational=variational, embedding_dropout=embedding_dropout,
                         weight_drop=weight_drop, tie_weights=tie_weights, init_scale=init_scale, fused=fused,
                         seed=seed, stateful=stateful)
        _check_arguments(**arguments)
        for name, value in arguments.items():
            setattr(self, name, value)
        self.softmax, self.cutoffs, self.stateful = softmax, list(cutoffs or []), bool(stateful)
        _check_softmax(softmax, self.cutoffs, cutoffs, vocabulary_size, tie_weights, embedding_size, hidden_size)
        self.state_variables = []  # stateful: [(h, c)] per layer, (batch_size, hidden_size) each
        self._make_layers()
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _make_layers(self):
        """The sublayers (built in build()): embedding, LSTMs, and the full or adaptive softmax layer."""
        seed, init_scale, adaptive = self.seed, self.init_scale, self.softmax == "adaptive"

        def initializer(default):
            return keras.initializers.RandomUniform(-init_scale, init_scale, seed=seed) if init_scale > 0 else default

        if adaptive and self.tie_weights:
            self.embedding = AdaptiveInput(self.vocabulary_size, self.embedding_size, self.cutoffs,
                                           init_scale=init_scale, seed=seed, name="embedding")
        else:
            self.embedding = keras.layers.Embedding(
                self.vocabulary_size, self.embedding_size, name="embedding",
                embeddings_initializer=initializer(keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)))
        self.lstm_layers = [LSTM(self.hidden_size, init_scale=init_scale, weight_drop=self.weight_drop,
                                 fused=self.fused, seed=seed + 1 + i, name=f"lstm_{i + 1}")
                            for i in range(self.num_layers)]
        if adaptive:
            self.adaptive_softmax = AdaptiveSoftmax(self.vocabulary_size, self.hidden_size, self.cutoffs,
                                                    tied=self.tie_weights, init_scale=init_scale, seed=seed,
                                                    name="adaptive_softmax")
        elif not self.tie_weights:
            self.output_layer = keras.layers.Dense(
                self.vocabulary_size, name="softmax",
                kernel_initializer=initializer(keras.initializers.GlorotUniform(seed=seed)),
                bias_initializer=initializer("zeros"))

    def build(self, input_shape=None):
        self.embedding.build((None, None))
        size = self.embedding_size
        for layer in self.lstm_layers:
            layer.build((None, None, size))
            size = layer.units
        if self.softmax == "adaptive":
            self.adaptive_softmax.build((None, None, size))
        elif self.tie_weights:
            self.output_bias = self.add_weight(shape=(self.vocabulary_size,), initializer="zeros",
                                               name="softmax_bias")
        else:
            self.output_layer.build((None, None, size))
            # stored (vocabulary, size) in memory, as torch's Linear and a tied embedding are: the matrix products
            # of the softmax layer then run on the same layouts as plain PyTorch's (shapes and files unchanged)
            torch_backend.transposed_storage(self.output_layer.kernel)
        if self.stateful:
            self._build_state_variables(None if input_shape is None else input_shape[0])

    def _build_state_variables(self, batch_size):
        if batch_size is None:
            raise ValueError("LSTMLanguageModel: stateful=True needs a fixed batch size: "
                             "model.build((batch_size, None))")
        self.state_variables = [tuple(self.add_weight(shape=(batch_size, self.hidden_size), initializer="zeros",
                                                      trainable=False, name=f"{kind}_state_{i + 1}")
                                      for kind in "hc") for i in range(self.num_layers)]

    def reset_states(self):
        """Stateful: zero the carried LSTM states (at the start of an epoch, before another text)."""
        for variable in (v for pair in self.state_variables for v in pair):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def initial_states(self, batch_size):
        """Zero (h, c) for every layer."""
        return [layer.initial_state(batch_size) for layer in self.lstm_layers]

    def call_with_states(self, token_ids, states=None, training=False, last_only=False, features_only=False):
        """Logits for every position (or only the last), and the LSTM states after the last position.

        Args:
            token_ids: (batch, time) int tensor.
            states: list of (h, c) per layer, each (batch, hidden_size); None = zeros.
            last_only: apply the softmax layer to the last position only (next-word prediction: the
                (hidden x vocabulary) product is the largest cost, so skip it where it is not needed).
            features_only: return the softmax layer's input (batch, time, hidden_size) instead of the logits,
                for a caller that applies the softmax layer itself (evaluation of a full softmax, blockwise,
                with `softmax_layer()`).
        Returns:
            logits (batch, time or 1, vocabulary_size) and the new states; with the adaptive softmax the
            "logits" are normalised log-probabilities (float32).
        """
        x, new_states = self.hidden_states(token_ids, states, training)  # x: (batch, time, hidden_size)
        if last_only:
            x = x[:, -1:]
        if features_only:
            return x, new_states
        return self.output_scores(x, training), new_states  # (batch, time, vocabulary_size)

    def output_scores(self, hidden, training=False):
        """The softmax layer on top-layer outputs (..., hidden_size) -> (..., vocabulary_size): logits, or with
        the adaptive softmax normalised log-probabilities (float32). A softmax of either is the distribution."""
        if self.softmax == "adaptive":
            return self.adaptive_softmax.log_probabilities(hidden, self._tied_bands())
        return torch_backend.dense(hidden, *self.softmax_layer())  # Dense's mathematics, one addmm on torch

    def hidden_states(self, token_ids, states=None, training=False):
        """The last LSTM layer's output (after its dropout in training) and the new states.

        Returns:
            (batch, time, hidden_size) tensor and a list of (h, c) per layer.
        """
        if not self.built:  # a new model called here before model(x) or build(): create its weights first
            self.build()
        seed = self.seed_generator
        # The sublayers are built and given real tensors, so their call() runs directly: Keras' __call__
        # bookkeeping costs ~0.7 ms per layer (more than a 2x200 model's whole step at inference) and casts
        # bfloat16 activations to float32 between layers under autocast.
        x = self.embedding.call(token_ids)  # (batch, time, embedding_size)
        if training:
            x = embedding_dropout(x, token_ids, self.vocabulary_size, self.embedding_dropout, seed)
            x = dropout(x, self.input_dropout, seed, self.variational)
        new_states = []
        for i, layer in enumerate(self.lstm_layers):
            x, state = layer.call(x, initial_state=None if states is None else states[i], training=training)
            new_states.append(state)  # x: (batch, time, hidden_size)
            if training:
                last = i == self.num_layers - 1
                x = dropout(x, self.dropout if last else self.layer_dropout, seed, self.variational)
        return x, new_states

    def adaptive_scores(self, hidden, targets):
        """Evaluation sums of the adaptive softmax on top-layer outputs (..., hidden_size) against (...)
        targets: (sum of -log p(target) in nats, top-1 hits, top-5 hits), without the (tokens, V) table
        (AdaptiveSoftmax.scores)."""
        hidden = ops.reshape(hidden, (-1, ops.shape(hidden)[-1]))  # (tokens, hidden_size)
        return self.adaptive_softmax.scores(hidden, ops.reshape(targets, (-1,)), self._tied_bands())

    def target_log_probabilities(self, token_ids, targets, states=None, training=False):
        """log p(target) of every token with the adaptive softmax's cheap path (only each target's cluster).

        Args:
            token_ids, targets: (batch, time) int tensors.
            states: as in call_with_states.
        Returns:
            (log p(target) (batch * time,) float32, top-1 hits (a scalar tensor), the new states).
        """
        if self.softmax != "adaptive":
            raise ValueError("target_log_probabilities is the adaptive softmax's training path")
        x, new_states = self.hidden_states(token_ids, states, training)
        x = ops.reshape(x, (-1, ops.shape(x)[-1]))  # (batch * time, hidden_size)
        log_probs, hits = self.adaptive_softmax.target_log_probabilities(x, ops.reshape(targets, (-1,)),
                                                                         self._tied_bands())
        return log_probs, hits, new_states

    def _tied_bands(self):
        return self.embedding.bands() if self.tie_weights else None

    def softmax_layer(self):
        """(kernel (size, vocabulary), bias (vocabulary,)): logits = features @ kernel + bias. Tied: the kernel is
        the embedding matrix E (vocabulary, size) transposed, E itself (no copy). Full softmax only."""
        if self.softmax == "adaptive":
            raise ValueError("softmax_layer is the full softmax's (kernel, bias); the adaptive softmax has clusters")
        if self.tie_weights:
            return ops.transpose(self.embedding.embeddings), self.output_bias
        return self.output_layer.kernel, self.output_layer.bias

    def call(self, token_ids, training=False):
        if not self.stateful:
            return self.call_with_states(token_ids, None, training)[0]
        batch_size = self.state_variables[0][0].shape[0]
        if token_ids.shape[0] is not None and token_ids.shape[0] != batch_size:
            raise ValueError(f"LSTMLanguageModel: stateful with batch size {batch_size}, got a batch of "
                             f"{token_ids.shape[0]} rows")
        # copies: on torch assign() writes in place, and autograd still needs the states this batch started from
        states = [tuple(ops.copy(v.value) for v in pair) for pair in self.state_variables]
        logits, new_states = self.call_with_states(token_ids, states, training)
        for pair, new_pair in zip(self.state_variables, new_states):
            for variable, value in zip(pair, new_pair):
                variable.assign(ops.stop_gradient(value))
        return logits

    def get_config(self):
        config = {**super().get_config(), **{name: getattr(self, name) for name in (
            "vocabulary_size", "embedding_size", "hidden_size", "num_layers", "dropout", "input_dropout",
            "layer_dropout", "variational", "embedding_dropout", "weight_drop", "tie_weights", "init_scale",
            "fused", "seed", "softmax", "cutoffs")}}
        return {**config, "stateful": True} if self.stateful else config  # stateless: the config of before


def _check_softmax(softmax, cutoffs, given, vocabulary_size, tie_weights, embedding_size, hidden_size):
    """The softmax kind and its cutoffs (`cutoffs` as a list, `given` as passed), and tying's size rule."""
    if softmax not in ("full", "adaptive"):
        raise ValueError(f"LSTMLanguageModel: softmax must be 'full' or 'adaptive', got {softmax!r}")
    integers = all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in cutoffs)
    if softmax == "adaptive" and not (cutoffs and integers and cutoffs == sorted(set(cutoffs))
                                      and 0 < cutoffs[0] and cutoffs[-1] < vocabulary_size):
        raise ValueError(f"LSTMLanguageModel: cutoffs must be increasing positive integers below the "
                         f"vocabulary size {vocabulary_size}, got {given!r}")
    if tie_weights and embedding_size != hidden_size:
        raise ValueError("tie_weights needs embedding_size == hidden_size")


def _check_arguments(**values):
    """The constructor's arguments, checked: a hand-edited or damaged .keras config fails here with a ValueError
    naming the argument, rather than building a model with a string for a size."""
    for name in ("vocabulary_size", "embedding_size", "hidden_size", "num_layers"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"LSTMLanguageModel: {name} must be a positive integer, got {value!r}")
    for name in ("dropout", "input_dropout", "layer_dropout", "embedding_dropout", "weight_drop"):
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
            raise ValueError(f"LSTMLanguageModel: {name} must be a number in [0, 1), got {value!r}")
    value = values["init_scale"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"LSTMLanguageModel: init_scale must be a number >= 0, got {value!r}")
    for name in ("variational", "tie_weights", "fused", "stateful"):
        if not isinstance(values[name], (bool, np.bool_)):
            raise ValueError(f"LSTMLanguageModel: {name} must be true or false, got {values[name]!r}")
    if isinstance(values["seed"], bool) or not isinstance(values["seed"], numbers.Integral):
        raise ValueError(f"LSTMLanguageModel: seed must be an integer, got {values['seed']!r}")


def build_model(config, vocabulary_size):
    """The model a Config describes, built (weights created)."""
    model = LSTMLanguageModel(
        vocabulary_size=vocabulary_size, embedding_size=config.word_vector_size, hidden_size=config.hidden_size,
        num_layers=config.num_layers, dropout=config.dropout, input_dropout=config.input_dropout,
        layer_dropout=config.layer_dropout, variational=config.variational,
        embedding_dropout=config.embedding_dropout, weight_drop=config.weight_drop,
        tie_weights=config.tie_weights, init_scale=config.init_scale, fused=config.fused, seed=config.seed,
        softmax=config.softmax,
        cutoffs=resolve_cutoffs(config.cutoffs, vocabulary_size) if config.softmax == "adaptive" else None)
    model.build((None, None))
    return model
