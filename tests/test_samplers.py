"""Samplers on plain logits (no model): greedy, seeded sampling, top-k and top-p restrictions."""

import math

import numpy as np
import pytest

from lstmlm.inference.samplers import GreedySampler, RandomSampler, TopKSampler, TopPSampler, make_sampler, softmax

LOGITS = np.log(np.array([0.05, 0.4, 0.1, 0.25, 0.02, 0.18]))  # probabilities in id order


def draws(sampler, logits, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sampler(logits, rng) for _ in range(n)])


def test_greedy_is_argmax():
    rng = np.random.default_rng(0)
    sampler = make_sampler(temperature=0)
    assert isinstance(sampler, GreedySampler)
    for _ in range(50):
        logits = rng.normal(size=17)
        assert sampler(logits, rng) == int(np.argmax(logits))
    assert sampler(np.array([1.0, 3.0, 3.0]), rng) == 1  # ties: lowest id
    assert sampler.allowed(LOGITS).tolist() == [1]


def test_seeded_sampling_is_reproducible():
    sampler = make_sampler(temperature=1.0)
    assert isinstance(sampler, RandomSampler)
    np.testing.assert_array_equal(draws(sampler, LOGITS, 200, seed=7), draws(sampler, LOGITS, 200, seed=7))
    assert not np.array_equal(draws(sampler, LOGITS, 200, seed=7), draws(sampler, LOGITS, 200, seed=8))


def test_sampling_follows_the_distribution():
    frequencies = np.bincount(draws(RandomSampler(), LOGITS, 6000), minlength=6) / 6000
    np.testing.assert_allclose(frequencies, softmax(LOGITS), atol=0.03)


def test_temperature_sharpens_and_flattens():
    cold = RandomSampler(0.5).probabilities(LOGITS)
    hot = RandomSampler(2.0).probabilities(LOGITS)
    expected_cold = np.array([0.05, 0.4, 0.1, 0.25, 0.02, 0.18]) ** 2
    np.testing.assert_allclose(cold, expected_cold / expected_cold.sum(), rtol=1e-9)
    assert cold.max() > softmax(LOGITS).max() > hot.max()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_only_emits_the_k_most_likely(k):
    sampler = make_sampler(temperature=1.0, top_k=k)
    assert isinstance(sampler, TopKSampler)
    allowed = set(np.argsort(-LOGITS)[:k].tolist())
    assert set(sampler.allowed(LOGITS).tolist()) == allowed
    seen = set(draws(sampler, LOGITS, 2000).tolist())
    assert seen <= allowed
    assert seen == allowed  # and each allowed word does come up
    probabilities = sampler.probabilities(LOGITS)
    assert probabilities.sum() == pytest.approx(1.0)
    assert (probabilities[list(set(range(6)) - allowed)] == 0).all()


def test_top_k_larger_than_vocabulary():
    assert sorted(TopKSampler(100).allowed(LOGITS).tolist()) == list(range(6))


@pytest.mark.parametrize("p, expected", [
    (0.3, {1}),              # 0.4 alone reaches 0.3
    (0.39, {1}),
    (0.5, {1, 3}),           # 0.4 < 0.5 <= 0.65
    (0.64, {1, 3}),
    (0.8, {1, 3, 5}),        # 0.65 < 0.8 <= 0.83
    (0.9, {1, 3, 5, 2}),     # 0.83 < 0.9 <= 0.93
    (1.0, {0, 1, 2, 3, 4, 5}),
])
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    sampler = TopPSampler(p)
    allowed = set(sampler.allowed(LOGITS).tolist())
    assert allowed == expected
    mass = softmax(LOGITS)[sorted(allowed)].sum()
    assert mass >= p - 1e-9
    smaller = sorted(allowed, key=lambda i: -LOGITS[i])[:-1]
    assert softmax(LOGITS)[smaller].sum() < p  # without its least likely word the set falls short of p
    assert set(draws(sampler, LOGITS, 1500).tolist()) <= allowed


def test_top_p_with_top_k_and_make_sampler_choice():
    sampler = make_sampler(temperature=1.0, top_k=2, top_p=0.95)
    assert isinstance(sampler, TopPSampler)
    assert set(sampler.allowed(LOGITS).tolist()) == {1, 3}  # top-k cuts first
    assert set(draws(sampler, LOGITS, 1000).tolist()) <= {1, 3}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_sampler(temperature=-1)
    with pytest.raises(ValueError):
        TopKSampler(0)
    with pytest.raises(ValueError):
        TopPSampler(0)
    with pytest.raises(ValueError):
        TopPSampler(1.5)
    with pytest.raises(ValueError):
        RandomSampler(0)


def test_settings_that_used_to_be_ignored_or_crash_inside_numpy():
    """nan / inf temperature failed in rng.choice ('Probabilities contain NaN'); top_p 5 or nan and a negative
    top_k were silently ignored, and top_k -3 with top_p dropped the 3 least likely words."""
    for settings in [dict(temperature=math.nan), dict(temperature=math.inf), dict(top_p=5.0), dict(top_p=math.nan),
                     dict(top_p=0.0), dict(top_k=-1), dict(top_k=-3, top_p=0.5), dict(top_k=2.5)]:
        with pytest.raises(ValueError, match="temperature|top_k|top_p"):
            make_sampler(**settings)


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-30])
def test_tiny_temperature_is_greedy_not_nan(temperature):
    """logits / 1e-310 overflows to inf and inf - inf is nan; (logits - max) / T does not."""
    for sampler in (RandomSampler(temperature), TopKSampler(3, temperature), TopPSampler(0.9, temperature)):
        probabilities = sampler.probabilities(LOGITS * 1e3)
        assert probabilities.tolist() == [0, 1, 0, 0, 0, 0]
        assert set(draws(sampler, LOGITS, 50).tolist()) == {1}


def test_sample_rows_equals_one_row_at_a_time():
    """The batched sampler (batched generation) draws exactly what each row would draw alone."""
    import numpy as np

    from lstmlm.inference.samplers import make_sampler, sample_rows

    logits = np.random.default_rng(0).normal(0, 3, (16, 300)).astype(np.float32)
    for settings in (dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7), dict(temperature=1e-310),
                     dict(temperature=1.3, top_k=5), dict(temperature=0.9, top_p=0.8)):
        sampler = make_sampler(**settings)
        rows = sample_rows(sampler, logits, [np.random.default_rng(i) for i in range(16)])
        assert rows == [sampler(row, np.random.default_rng(i)) for i, row in enumerate(logits)], settings


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3, 1e-310])
@pytest.mark.parametrize("shape", [(1, 50), (3, 1000), (64, 10_000)])
def test_draw_softmax_rows_is_the_three_step_sampler_bit_for_bit(temperature, shape):
    """The fast batched path (one array, in place, row halves in two threads for large batches) draws exactly
    what draw(softmax(scaled(logits))) draws, and its cumulative distribution is the same to the last bit."""
    import numpy as np

    from lstmlm.inference import samplers

    logits = np.random.default_rng(shape[0]).normal(0, 4, shape).astype(np.float32)
    reference = samplers.draw(samplers.softmax(samplers.RandomSampler(temperature).scaled(logits)),
                              [np.random.default_rng(7 + i) for i in range(shape[0])])
    fast = samplers.draw_softmax_rows(logits, temperature, [np.random.default_rng(7 + i) for i in range(shape[0])])
    assert fast.tolist() == reference.tolist()
    z = np.array(logits, dtype=np.float64)
    cdf = np.cumsum(samplers.softmax(samplers.RandomSampler(temperature).scaled(logits)), axis=1)
    cdf /= cdf[:, -1:]
    block = samplers._draw_softmax_block  # the arithmetic, without the draw: compare the distributions themselves
    np.testing.assert_array_equal(_cdf_of(block, z, temperature), cdf)


def _cdf_of(block, z, temperature):
    """The cumulative distribution _draw_softmax_block computes (it draws from it in place)."""
    import numpy as np

    class Capture:
        def random(self):
            return 0.5

    captured = []
    original = np.searchsorted

    def spy(row, value, side):
        captured.append(np.array(row))
        return original(row, value, side=side)

    np.searchsorted = spy
    try:
        block(z, temperature, [Capture() for _ in range(len(z))])
    finally:
        np.searchsorted = original
    return np.stack(captured)
