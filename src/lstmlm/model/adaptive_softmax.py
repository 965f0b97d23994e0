"""Adaptive softmax (Grave, Joulin, Cisse, Grangier & Jegou 2017, "Efficient softmax approximation for GPUs",
arXiv:1609.04309), kept exact: a normalised distribution over the whole vocabulary, trained cheaply.

Word ids are sorted by descending training count (vocabulary.py), so cutoffs c_1 < ... < c_k cut the
vocabulary into bands: band 0 = the shortlist [0, c_1) of frequent words, band i = the tail cluster
[c_i, c_{i+1}) of ever rarer words (c_{k+1} = vocabulary size V).

    head:       one softmax over c_1 + k entries: the shortlist words and one entry per tail cluster
    cluster i:  log p(w | h) = log p(cluster i | h) + log softmax_i(w | h), where cluster i's softmax runs on a
                projection of h to d_i = d / factor^i dimensions (rarer words get smaller vectors)

Every probability is a product of normalised ones, so p sums to 1 over all V words: evaluation, top-k accuracy,
prediction, generation and scoring read `log_probabilities` (every cluster at every position). Training needs
only -log p(target): the head for every token, and cluster i only for the tokens whose target is in it
(`target_log_probabilities`; on WikiText-2 with cutoffs 2000,10000, 77% of tokens need the head alone).

Tied weights (`tied=True`) are adaptive input embeddings (Baevski & Auli 2019, arXiv:1809.10853): the input
vector of a word in band i is its d_i-dimensional band vector projected up to d by the band's projection, and the
softmax uses the same band vectors and the same projection (transposed, d -> d_i). `AdaptiveInput` owns those
weights; `AdaptiveSoftmax` then owns only the head's cluster vectors and the biases, and is handed the band
weights on each call.

Everything is keras.ops, so it runs on every backend. The training path selects each cluster's tokens with
`ops.nonzero` (a data-dependent shape: eager execution, as lstmlm's torch training loop is).
"""

import keras
import numpy as np
from keras import ops

from lstmlm.config import parse_cutoffs  # noqa: F401 (config validates --cutoffs without importing Keras)
from lstmlm.errors import LstmlmError

DEFAULT_FACTOR = 4


# ---- cutoffs ---------------------------------------------------------------------------------------------
def resolve_cutoffs(text, vocabulary_size):
    """The cutoffs for a vocabulary: the given ones (each must be below its size), or automatic ones for ''.

    Automatic: V/16 and V/3 (WikiText-2's 33,278 words: 2,079 and 11,092, near the usual 2000,10000), dropping
    any that would leave an empty band.

    Example:
        >>> resolve_cutoffs("", 33278), resolve_cutoffs("", 10000), resolve_cutoffs("", 20)
        ([2079, 11092], [625, 3333], [1, 6])
    """
    cutoffs = parse_cutoffs(text)
    if not cutoffs:
        cutoffs = sorted({c for c in (vocabulary_size // 16, vocabulary_size // 3) if 0 < c < vocabulary_size})
        if not cutoffs:
            raise LstmlmError(f"softmax adaptive: a vocabulary of {vocabulary_size} words is too small for a "
                              "shortlist and a cluster", argument="softmax")
    if cutoffs[-1] >= vocabulary_size:
        raise LstmlmError(f"cutoffs {','.join(map(str, cutoffs))}: every cutoff must be below the vocabulary "
                          f"size ({vocabulary_size:,} words)", argument="cutoffs")
    return cutoffs


def band_bounds(cutoffs, vocabulary_size):
    """[(first id, end id)] of band 0 (the shortlist) and each tail cluster."""
    edges = [0, *cutoffs, vocabulary_size]
    return list(zip(edges[:-1], edges[1:]))


def band_sizes(size, count, factor):
    """The vector size of each band: size, size / factor, size / factor^2, ... (at least 1)."""
    return [max(1, int(size // factor ** i)) for i in range(count)]


def _initializer(init_scale, seed, default):
    if init_scale > 0:
        return keras.initializers.RandomUniform(-init_scale, init_scale, seed=seed)
    return default


# ---- adaptive input (the tied weights) -------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="lstmlm")
class AdaptiveInput(keras.layers.Layer):
    """Word vectors of size `output_size` from per-band vectors of size output_size / factor^i (Baevski & Auli).

    Args:
        vocabulary_size: V.
        output_size: d, the vector size the LSTM reads.
        cutoffs: band boundaries (see the module docstring).
        factor: each band's vectors are `factor` times smaller than the previous band's.
        init_scale: uniform(-s, s) initialisation if > 0; else uniform(-0.05, 0.05) vectors (as Keras'
            Embedding) and glorot-uniform projections.
        seed: initialisation seed.

    Example:
        >>> layer = AdaptiveInput(20, 8, [4, 10])
        >>> layer.build()
        >>> tuple(layer(keras.ops.convert_to_tensor([[0, 5, 19]])).shape), tuple(layer.embeddings.shape)
        ((1, 3, 8), (20, 8))
    """

    def __init__(self, vocabulary_size, output_size, cutoffs, factor=DEFAULT_FACTOR, init_scale=0.0, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.output_size = vocabulary_size, output_size
        self.cutoffs, self.factor = list(cutoffs), factor
        self.init_scale, self.seed = init_scale, seed
        self.bounds = band_bounds(self.cutoffs, vocabulary_size)
        self.sizes = band_sizes(output_size, len(self.bounds), factor)

    def build(self, input_shape=None):
        seed = self.seed or 0
        self.vectors, self.projections = [], []
        for i, ((first, end), size) in enumerate(zip(self.bounds, self.sizes)):
            self.vectors.append(self.add_weight(  # (band words, d_i)
                shape=(end - first, size), name=f"band_{i}_vectors", initializer=_initializer(
                    self.init_scale, seed + 10 * i, keras.initializers.RandomUniform(-0.05, 0.05, seed=seed + 10 * i))))
            self.projections.append(None if size == self.output_size else self.add_weight(  # (d, d_i)
                shape=(self.output_size, size), name=f"band_{i}_projection", initializer=_initializer(
                    self.init_scale, seed + 10 * i + 1, keras.initializers.GlorotUniform(seed=seed + 10 * i + 1))))

    def bands(self):
        """[(vectors (band words, d_i), projection (d, d_i) or None)] per band, as tensors."""
        return [(ops.convert_to_tensor(v), None if p is None else ops.convert_to_tensor(p))
                for v, p in zip(self.vectors, self.projections)]

    def call(self, token_ids):
        """(batch, time) ids -> (batch, time, d): each band looks up its own ids and projects them up to d."""
        out = None
        for (first, end), (vectors, projection) in zip(self.bounds, self.bands()):
            inside = ops.logical_and(token_ids >= first, token_ids < end)  # (batch, time)
            local = ops.where(inside, token_ids - first, 0)
            x = ops.take(vectors, local, axis=0)  # (batch, time, d_i)
            if projection is not None:
                x = ops.matmul(x, ops.transpose(projection))  # (batch, time, d)
            x = x * ops.expand_dims(ops.cast(inside, x.dtype), -1)
            out = x if out is None else out + x
        return out

    @property
    def embeddings(self):
        """The whole (V, d) table of input vectors (for inspection: gates.py reads it like Embedding's)."""
        rows = [v if p is None else ops.matmul(v, ops.transpose(p)) for v, p in self.bands()]
        return ops.concatenate(rows, axis=0)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "output_size": self.output_size,
                "cutoffs": self.cutoffs, "factor": self.factor, "init_scale": self.init_scale, "seed": self.seed}


# ---- adaptive softmax ------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="lstmlm")
class AdaptiveSoftmax(keras.layers.Layer):
    """Exact log-probabilities over V words from a head softmax and per-cluster softmaxes.

    Args:
        vocabulary_size: V.
        input_size: d, the size of the hidden states it reads.
        cutoffs: band boundaries (see the module docstring).
        factor: cluster i's vectors have d / factor^i dimensions.
        tied: the band vectors and projections are an AdaptiveInput's, passed as `bands` on every call; this
            layer then owns only the head's cluster vectors and the biases.
        init_scale: uniform(-s, s) initialisation if > 0; else glorot-uniform weights and zero biases.
        seed: initialisation seed.

    Example:
        >>> layer = AdaptiveSoftmax(20, 8, [4, 10])
        >>> layer.build()
        >>> log_probs = layer.log_probabilities(keras.ops.ones((2, 3, 8)))
        >>> tuple(log_probs.shape), round(float(keras.ops.sum(keras.ops.exp(log_probs[0, 0]))), 5)
        ((2, 3, 20), 1.0)
    """

    def __init__(self, vocabulary_size, input_size, cutoffs, factor=DEFAULT_FACTOR, tied=False, init_scale=0.0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.input_size = vocabulary_size, input_size
        self.cutoffs, self.factor, self.tied = list(cutoffs), factor, tied
        self.init_scale, self.seed = init_scale, seed
        self.bounds = band_bounds(self.cutoffs, vocabulary_size)
        self.sizes = band_sizes(input_size, len(self.bounds), factor)
        if not self.cutoffs or self.cutoffs[-1] >= vocabulary_size:
            raise ValueError(f"cutoffs {self.cutoffs} must be non-empty and below the vocabulary size "
                             f"{vocabulary_size}")

    @property
    def shortlist(self):
        return self.cutoffs[0]

    def build(self, input_shape=None):
        seed, d, k = self.seed or 0, self.input_size, len(self.cutoffs)

        def weight(name, shape, offset, default):
            return self.add_weight(shape=shape, name=name,
                                   initializer=_initializer(self.init_scale, seed + 1000 + offset, default))

        glorot = keras.initializers.GlorotUniform
        if self.tied:  # the shortlist's vectors are band 0's input vectors; the clusters' entries are new
            self.cluster_vectors = weight("cluster_vectors", (k, d), 0, glorot(seed=seed + 1000))  # (k, d)
        else:  # the head: one row per shortlist word, then one per cluster
            self.head = weight("head", (self.shortlist + k, d), 0, glorot(seed=seed + 1000))  # (c_1 + k, d)
        self.head_bias = weight("head_bias", (self.shortlist + k,), 1, "zeros")
        self.tail_vectors, self.tail_projections, self.tail_biases = [], [], []
        for i in range(1, k + 1):
            (first, end), size = self.bounds[i], self.sizes[i]
            if not self.tied:
                self.tail_projections.append(weight(f"cluster_{i}_projection", (d, size), 10 * i,
                                                    glorot(seed=seed + 1000 + 10 * i)))  # (d, d_i)
                self.tail_vectors.append(weight(f"cluster_{i}_vectors", (end - first, size), 10 * i + 1,
                                                glorot(seed=seed + 1001 + 10 * i)))  # (cluster words, d_i)
            self.tail_biases.append(weight(f"cluster_{i}_bias", (end - first,), 10 * i + 2, "zeros"))

    def _weights(self, bands):
        """(head (c_1 + k, d), [(vectors (cluster words, d_i), projection (d, d_i) or None)] per cluster)."""
        if self.tied:
            if bands is None:
                raise ValueError("a tied AdaptiveSoftmax needs the AdaptiveInput's bands")
            return ops.concatenate([bands[0][0], ops.convert_to_tensor(self.cluster_vectors)], axis=0), bands[1:]
        tails = zip(self.tail_vectors, self.tail_projections)
        return ops.convert_to_tensor(self.head), [(ops.convert_to_tensor(v), ops.convert_to_tensor(p)) for v, p in tails]

    def _head_log_probs(self, hidden, head):
        logits = ops.matmul(hidden, ops.transpose(head)) + self.head_bias  # (..., c_1 + k)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)  # float32 even where the matmul is bfloat16

    def _cluster_log_probs(self, hidden, i, vectors, projection):
        """log softmax within cluster i (1-based) for hidden (..., d): (..., cluster words)."""
        z = hidden if projection is None else ops.matmul(hidden, projection)  # (..., d_i)
        logits = ops.matmul(z, ops.transpose(vectors)) + self.tail_biases[i - 1]
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def log_probabilities(self, hidden, bands=None):
        """Normalised log-probabilities of every word: (..., d) -> (..., V), float32."""
        head, tails = self._weights(bands)
        head_log_probs = self._head_log_probs(hidden, head)
        parts = [head_log_probs[..., : self.shortlist]]
        for i, (vectors, projection) in enumerate(tails, 1):
            cluster = head_log_probs[..., self.shortlist + i - 1 : self.shortlist + i]  # log p(cluster i), (..., 1)
            parts.append(cluster + self._cluster_log_probs(hidden, i, vectors, projection))
        return ops.concatenate(parts, axis=-1)

    def call(self, hidden, bands=None):
        return self.log_probabilities(hidden, bands)

    def _head_pass(self, hidden, targets, bands):
        """The head for every token: (tails' weights, int32 targets, head log-probabilities (tokens, c_1 + k),
        each target's band (0 = shortlist, i = tail cluster i), and log p(target) so far: the word's own for a
        shortlist target, its cluster's for a tail target)."""
        head, tails = self._weights(bands)
        head_log_probs = self._head_log_probs(hidden, head)  # (tokens, c_1 + k)
        targets = ops.cast(targets, "int32")
        cluster_of = ops.zeros_like(targets)
        for cutoff in self.cutoffs:
            cluster_of = cluster_of + ops.cast(targets >= cutoff, "int32")
        head_target = ops.where(cluster_of == 0, targets, self.shortlist + cluster_of - 1)
        target_log_probs = ops.take_along_axis(head_log_probs, head_target[:, None], axis=1)[:, 0]  # (tokens,)
        return tails, targets, head_log_probs, cluster_of, target_log_probs

    def target_log_probabilities(self, hidden, targets, bands=None):
        """log p(target) per token, computing each tail cluster only for the tokens whose target is in it.

        Args:
            hidden: (tokens, d) hidden states.
            targets: (tokens,) int word ids.
        Returns:
            (log p(target) (tokens,) float32, top-1 hits: how many targets are the most likely word, exactly
            as an argmax over `log_probabilities` would count them, ties counted as hits).
        """
        tails, targets, head_log_probs, cluster_of, target_log_probs = self._head_pass(hidden, targets, bands)
        # beaten[t] = 1 once some word other than the target is known to have a higher probability
        head_values = ops.stop_gradient(head_log_probs)
        beaten = ops.cast(ops.any(head_values[:, : self.shortlist] > ops.stop_gradient(target_log_probs)[:, None],
                                  axis=1), "float32")
        for i, (vectors, projection) in enumerate(tails, 1):
            rows = ops.nonzero(cluster_of == i)[0]  # the tokens whose target is in cluster i
            if rows.shape[0] == 0:
                continue
            within = self._cluster_log_probs(ops.take(hidden, rows, axis=0), i, vectors, projection)  # (n_i, size_i)
            local = ops.take(targets, rows) - self.bounds[i][0]
            target_within = ops.take_along_axis(within, local[:, None], axis=1)[:, 0]  # (n_i,)
            target_log_probs = ops.scatter_update(target_log_probs, rows[:, None],
                                                  ops.take(target_log_probs, rows) + target_within)
            own = ops.any(ops.stop_gradient(within) > ops.stop_gradient(target_within)[:, None], axis=1)
            beaten = ops.scatter_update(beaten, rows[:, None], ops.maximum(ops.take(beaten, rows),
                                                                           ops.cast(own, "float32")))
        hits = self._count_hits(ops.stop_gradient(hidden), cluster_of, ops.stop_gradient(target_log_probs),
                                head_values, beaten, tails)
        return target_log_probs, hits

    def _count_hits(self, hidden, cluster_of, target_log_probs, head_log_probs, beaten, tails):
        """Finish the top-1 check: a word of another cluster i can beat the target only where log p(cluster i)
        exceeds log p(target), so cluster i is computed for just those tokens (no gradient)."""
        for i, (vectors, projection) in enumerate(tails, 1):
            cluster = head_log_probs[:, self.shortlist + i - 1]
            open_rows = ops.logical_and(ops.logical_and(beaten == 0, cluster_of != i), cluster > target_log_probs)
            rows = ops.nonzero(open_rows)[0]
            if rows.shape[0] == 0:
                continue
            within = self._cluster_log_probs(ops.take(hidden, rows, axis=0), i, vectors, projection)
            best = ops.take(cluster, rows) + ops.max(within, axis=1)  # the cluster's most likely word, (n,)
            beaten = ops.scatter_update(beaten, rows[:, None], ops.cast(best > ops.take(target_log_probs, rows),
                                                                        "float32"))
        return ops.sum(1.0 - beaten)

    def scores(self, hidden, targets, bands=None, k=5):
        """Evaluation sums without the (tokens, V) table: (sum of -log p(target) in nats, top-1 hits, top-k hits).

        The same numbers as ranking `log_probabilities` (ties shared as in torch_backend.scores: a top-k hit
        counts min(1, max(0, k - above) / tied), `above` = words more likely than the target, `tied` = words as
        likely, itself included), but each tail cluster is computed only for the tokens that need it:
        1. log p(target): the head for every token, cluster i for the tokens whose target is in it (and their
           words of cluster i are counted against the target right there);
        2. the shortlist words are counted against the target for every token;
        3. cluster i for another token only where the target is still in reach of the top k (above < k) and
           p(cluster i) >= p(target): every word of cluster i is at most as likely as the cluster itself.
        On WikiText-2 (cutoffs 2079, 11092), most tokens need the 2,081-entry head alone.

        Args:
            hidden: (tokens, d) hidden states.
            targets: (tokens,) int word ids.
            bands: the AdaptiveInput's bands when tied.
            k: the k of the top-k count.
        Returns:
            three Python floats.
        """
        tails, targets, head_log_probs, cluster_of, target = self._head_pass(hidden, targets, bands)
        above = ops.zeros_like(target)  # words more likely than the target
        tied = ops.zeros_like(target)  # words exactly as likely, the target itself included
        clusters = [head_log_probs[:, self.shortlist + i - 1] for i in range(1, len(tails) + 1)]

        def count(rows, i, target_rows, within, above, tied):
            """Add cluster i's words ((n, cluster words) log softmax `within`) to tokens `rows`' counts."""
            log_probs = ops.take(clusters[i - 1], rows)[:, None] + within  # log p(word), as log_probabilities
            return _add_counts(above, tied, rows, log_probs, target_rows)

        def within(rows, i):
            return self._cluster_log_probs(ops.take(hidden, rows, axis=0), i, *tails[i - 1])  # (n, cluster words)

        for i in range(1, len(tails) + 1):  # 1. the targets in cluster i, and the other words of cluster i
            rows = ops.nonzero(cluster_of == i)[0]
            if rows.shape[0] == 0:
                continue
            rows_within = within(rows, i)
            local = ops.take(targets, rows) - self.bounds[i][0]
            target_rows = ops.take(clusters[i - 1], rows) + ops.take_along_axis(rows_within, local[:, None],
                                                                                axis=1)[:, 0]
            target = ops.scatter_update(target, rows[:, None], target_rows)
            above, tied = count(rows, i, target_rows, rows_within, above, tied)
        shortlist = head_log_probs[:, : self.shortlist]  # 2. the shortlist words, for every token
        above = above + ops.sum(ops.cast(shortlist > target[:, None], "float32"), axis=1)
        tied = tied + ops.sum(ops.cast(shortlist == target[:, None], "float32"), axis=1)
        for i in range(1, len(tails) + 1):  # 3. cluster i where it can still matter
            reach = ops.logical_and(ops.logical_and(cluster_of != i, above < k), clusters[i - 1] >= target)
            rows = ops.nonzero(reach)[0]
            if rows.shape[0] > 0:
                above, tied = count(rows, i, ops.take(target, rows), within(rows, i), above, tied)
        tied = ops.maximum(tied, 1.0)  # the target ties with itself (guards a NaN log-probability)
        top1, topk = (ops.sum(ops.minimum(ops.maximum(limit - above, 0.0) / tied, 1.0)) for limit in (1.0, k))
        return -float(np.sum(ops.convert_to_numpy(target), dtype=np.float64)), float(top1), float(topk)

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "input_size": self.input_size,
                "cutoffs": self.cutoffs, "factor": self.factor, "tied": self.tied, "init_scale": self.init_scale,
                "seed": self.seed}


def _add_counts(above, tied, rows, log_probs, target_rows):
    """Add to tokens `rows`' counts the words of (n, words) `log_probs` more likely than (above) and as likely as
    (tied) each row's target log-probability; returns (above, tied)."""
    t = target_rows[:, None]
    above = ops.scatter_update(above, rows[:, None], ops.take(above, rows) + ops.sum(
        ops.cast(log_probs > t, "float32"), axis=1))
    tied = ops.scatter_update(tied, rows[:, None], ops.take(tied, rows) + ops.sum(
        ops.cast(log_probs == t, "float32"), axis=1))
    return above, tied
