"""How the next word is chosen from the model's logits: small strategy classes, testable without a model.

Every sampler maps a 1-D array of logits (one per vocabulary id) and a numpy Generator to one id;
`sample_rows(sampler, logits, rngs)` does the same for a batch of rows, each with its own Generator, giving
exactly the ids the rows would get one at a time (batched generation equals separate seeded runs).
`make_sampler(temperature, top_k, top_p)` picks the strategy: temperature 0 is greedy (argmax); otherwise
the logits are divided by the temperature, restricted to the k most likely words (top_k > 0) and/or to the
smallest set whose probability reaches top_p (nucleus sampling, Holtzman et al. 2020), then sampled.
"""

import math
import numbers

import numpy as np


def softmax(logits):
    """Softmax over the last axis in float64 (each row of a 2-D array exactly as it would be alone)."""
    z = np.array(logits, dtype=np.float64)  # a copy: the steps below work in place (one array, not five)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def draw(probabilities, rngs):
    """One id per row from each row's distribution, with one uniform number from each row's Generator.

    The same arithmetic as numpy's `rng.choice(len(p), p=p)` (cumulative sum, normalised by its last value,
    first index whose cumulative value exceeds the uniform number), so seeded results are those of earlier
    lstmlm versions, which called rng.choice.

    Args:
        probabilities: (rows, vocabulary) float64, each row summing to 1.
        rngs: one numpy Generator per row.
    Returns:
        (rows,) int64 ids.

    Example:
        >>> rng = np.random.default_rng(3)
        >>> int(draw(np.array([[0.2, 0.5, 0.3]]), [np.random.default_rng(3)])[0]) == int(rng.choice(3, p=[0.2, 0.5, 0.3]))
        True
    """
    cdf = np.cumsum(probabilities, axis=1)
    cdf /= cdf[:, -1:]
    return np.array([np.searchsorted(row, rng.random(), side="right") for row, rng in zip(cdf, rngs)])


class GreedySampler:
    """Always the most likely word (ties go to the lowest id, as np.argmax)."""

    def allowed(self, logits):
        return np.array([int(np.argmax(logits))])

    def __call__(self, logits, rng):
        return int(np.argmax(logits))


class RandomSampler:
    """Sample from softmax(logits / temperature) over the allowed words.

    Args:
        temperature: > 0; below 1 sharpens, above 1 flattens the distribution.
    """

    def __init__(self, temperature=1.0):
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (GreedySampler for 0), got {temperature}")
        self.temperature = temperature

    def allowed(self, logits):
        return np.arange(len(logits))

    def scaled(self, logits):
        """(logits - max) / temperature in float64, over the last axis (a batch of rows: each as if alone)."""
        logits = np.asarray(logits, dtype=np.float64)
        # Shift before dividing: (logits - max) / T is <= 0, so a tiny temperature gives -inf (probability 0),
        # never inf - inf = nan as logits / T would for T = 1e-310.
        with np.errstate(over="ignore"):  # overflow to -inf is intended: those words get probability 0
            return (logits - logits.max(axis=-1, keepdims=True)) / self.temperature

    def probabilities(self, logits):
        """The distribution sampled from: zero outside `allowed`, renormalised inside."""
        logits = self.scaled(logits)
        allowed = self.allowed(logits)
        probabilities = np.zeros(len(logits))
        probabilities[allowed] = softmax(logits[allowed])
        return probabilities

    def __call__(self, logits, rng):
        return int(draw(self.probabilities(logits)[None], [rng])[0])


class TopKSampler(RandomSampler):
    """Sample among the k most likely words."""

    def __init__(self, k, temperature=1.0):
        super().__init__(temperature)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {k}")
        self.k = k

    def allowed(self, logits):
        k = min(self.k, len(logits))
        return np.argpartition(-np.asarray(logits), k - 1)[:k]


class TopPSampler(RandomSampler):
    """Sample among the fewest most-likely words whose total probability reaches p (with an optional top-k cut)."""

    def __init__(self, p, temperature=1.0, k=0):
        super().__init__(temperature)
        if not 0 < p <= 1:  # also refuses nan
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = no cut), got {k}")
        self.p, self.k = p, k

    def allowed(self, logits):
        order = np.argsort(-np.asarray(logits), kind="stable")
        if self.k:
            order = order[: self.k]
        cumulative = np.cumsum(softmax(np.asarray(logits)[order]))
        return order[: int(np.searchsorted(cumulative, self.p)) + 1]  # the word that crosses p is included


def sample_rows(sampler, logits, rngs):
    """The id each row of `logits` (rows, vocabulary) gets from `sampler`, row i drawing from rngs[i].

    Equal to `[sampler(row, rng) for row, rng in zip(logits, rngs)]`, computed for all rows at once where the
    arithmetic allows (greedy; plain temperature sampling) so that 64 rows cost little more than one.
    """
    logits = np.asarray(logits)
    if type(sampler) is GreedySampler:
        return [int(i) for i in np.argmax(logits, axis=1)]
    if type(sampler) is RandomSampler:  # every word allowed: the distribution of all rows in one go
        return [int(i) for i in draw_softmax_rows(logits, sampler.temperature, rngs)]
    return [sampler(row, rng) for row, rng in zip(logits, rngs)]


_POOL = None  # two threads for the row halves of large batches (numpy's loops release the GIL)
PARALLEL_ELEMENTS = 1 << 18  # rows x vocabulary above which the halves run at once (64 x 10,000 is 640,000)


def draw_softmax_rows(logits, temperature, rngs):
    """`draw(softmax(RandomSampler(temperature).scaled(logits)), rngs)`, bit for bit, in fewer passes.

    The same float64 operations on every element in the same order -- shift by the row's maximum, divide by the
    temperature (skipped at 1: x / 1 == x), exp, divide by the row's sum, cumulative sum, divide by its last
    value, one uniform number per row -- in place on one array instead of six; the second shift by the maximum
    that `softmax` applies to already shifted logits (max 0: x - 0 == x) is left out. Row sums reduce each row
    alone, so a row's numbers do not depend on the other rows, and above PARALLEL_ELEMENTS the two halves of the
    rows run in two threads (the same arithmetic per row). 64 rows x 10,000 words: 5.9 ms before, measured in
    docs/runs/generation-paths.json.
    """
    global _POOL
    z = np.array(logits, dtype=np.float64)
    if z.size < PARALLEL_ELEMENTS or len(z) < 2:
        return _draw_softmax_block(z, temperature, rngs)
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(2, thread_name_prefix="lstmlm-sampler")
    half = len(z) // 2
    first = _POOL.submit(_draw_softmax_block, z[:half], temperature, rngs[:half])
    second = _draw_softmax_block(z[half:], temperature, rngs[half:])
    return np.concatenate([first.result(), second])


def _draw_softmax_block(z, temperature, rngs):
    """draw_softmax_rows on a float64 block of rows that it may overwrite."""
    z -= z.max(axis=-1, keepdims=True)
    if temperature != 1:
        with np.errstate(over="ignore"):  # -inf for a tiny temperature, as RandomSampler.scaled
            z /= temperature
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    np.cumsum(z, axis=1, out=z)
    z /= z[:, -1:]
    return np.array([np.searchsorted(row, rng.random(), side="right") for row, rng in zip(z, rngs)], dtype=np.int64)


def make_sampler(temperature=1.0, top_k=0, top_p=1.0):
    """The sampler for these settings; ValueError for a temperature that is negative or not finite, a negative
    top_k, or a top_p outside (0, 1] (each used to be ignored or to fail later, inside numpy)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = all words), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if temperature == 0:
        return GreedySampler()
    if top_p < 1.0:
        return TopPSampler(top_p, temperature, top_k)
    if top_k > 0:
        return TopKSampler(top_k, temperature)
    return RandomSampler(temperature)
