"""The prefix-state cache: bounded LRU by bytes, and prompts give bit-identical states with and without it."""

import numpy as np
import pytest

import lstmlm
from lstmlm.inference.prefix_cache import ENTRY_OVERHEAD, PrefixCache, prefix_keys, prompt_state
from lstmlm.inference.step_model import TorchStepModel


def test_lru_evicts_least_recently_used_first_and_stays_under_the_bound():
    cache = PrefixCache(max_bytes=3 * (100 + ENTRY_OVERHEAD))
    for key in (b"a", b"b", b"c"):
        cache.put(key, key.decode(), 100)
    assert cache.get(b"a") == "a"  # a is now the most recent; b the least
    cache.put(b"d", "d", 100)
    assert cache.get(b"b") is None and [cache.get(k) for k in (b"a", b"c", b"d")] == ["a", "c", "d"]
    assert cache.entries == 3 and cache.nbytes == 3 * (100 + ENTRY_OVERHEAD) <= cache.max_bytes
    cache.put(b"huge", "x", cache.max_bytes)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get(b"huge") is None and cache.entries == 3
    cache.put(b"a", "a2", 300)  # replacing an entry re-counts its bytes
    assert cache.nbytes <= cache.max_bytes and cache.get(b"a") == "a2"
    assert cache.hits >= 5 and cache.misses == 2


def test_prefix_keys_identify_prefixes():
    a, b = prefix_keys([1, 2, 3]), prefix_keys([1, 2, 4])
    assert a[0] is None and a[1:3] == b[1:3] and a[3] != b[3]
    assert len(set(a[1:])) == 3 and all(len(k) == 16 for k in a[1:])


@pytest.fixture(scope="module")
def keras_model():
    return lstmlm.build_model(lstmlm.preset("tiny", max_vocabulary_size=60, hidden_size=24, seed=3), 60)


def equal_states(a, b):
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_typing_with_the_cache_gives_the_same_bits_as_without(keras_model, precision):
    step = TorchStepModel(keras_model, precision)
    words = list(np.random.default_rng(0).integers(0, 60, 45))
    cache = PrefixCache()
    for end in list(range(1, 46)) + [20, 45, 9, 8, 16, 17]:  # growing like typing, then jumps back
        cached = prompt_state(step, words[:end], cache)
        assert equal_states(cached, prompt_state(step, words[:end])), end
    assert cache.hits > 40
    # an edit in the middle shares only the prefix before it
    edited = words[:30] + [7] + words[31:]
    assert equal_states(prompt_state(step, edited, cache), prompt_state(step, edited))


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_a_growing_prompt_runs_few_words_per_request(keras_model, precision):
    step = TorchStepModel(keras_model, precision)
    calls = []
    original = step.advance
    step.advance = lambda ids, states: calls.append(len(ids[0])) or original(ids, states)
    words = list(np.random.default_rng(1).integers(0, 60, 40))
    cache = PrefixCache()
    prompt_state(step, words[:30], cache)
    calls.clear()
    for end in range(31, 41):
        prompt_state(step, words[:end], cache)
    if precision == "int8":  # any prefix can be continued: one word per request
        assert calls == [1] * 10
    else:  # at most one block per request
        assert max(calls) <= 8 and sum(calls) <= 10 * 8


def test_the_cache_is_bounded_by_memory(keras_model):
    step = TorchStepModel(keras_model, "int8")
    state_bytes = step.nbytes(step.initial_states(1))
    cache = PrefixCache(max_bytes=5 * (state_bytes + ENTRY_OVERHEAD))
    rng = np.random.default_rng(2)
    for _ in range(20):
        prompt_state(step, list(rng.integers(0, 60, 12)), cache)
        assert cache.nbytes <= cache.max_bytes
    assert cache.entries == 5

