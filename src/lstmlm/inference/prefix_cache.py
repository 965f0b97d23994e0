"""The LSTM state after recent prompts, so that a prompt that grows by a word costs a step, not the whole prompt.

The web page asks for suggestions after every pause with the whole text before the cursor; without a cache each
request re-reads the text from the start. `prompt_state(step_model, ids, cache)` finds the longest prefix of `ids`
whose state is cached and runs only the words after it.

Results are identical with and without the cache, bit for bit, because the cache never changes how a prompt is
cut into calls:

- int8 (`step_model.batch_invariant`): a row's numbers do not depend on how the text is cut, so any cached
  prefix may be continued; the prompt's own state is stored.
- float32 / bfloat16: BLAS rounds a product of 8 rows differently from 8 products of one row, so a prompt is
  always computed in blocks of `BLOCK` words at fixed positions (0-7, 8-15, ...) and then the words after the
  last full block, with or without a cache. Only block ends (and the whole prompt, for a repeat of the same
  text) are stored and looked up; a growing prompt costs at most `BLOCK` words.

The cache is a least-recently-used map bounded by memory: the states' bytes plus `ENTRY_OVERHEAD` per entry
for the key and the bookkeeping. Keys are BLAKE2b digests of the id prefix (16 bytes however long the text).
Not thread-safe: its owner serialises calls (the server runs the model in one thread at a time).
"""

import hashlib
from collections import OrderedDict

import numpy as np

BLOCK = 8  # words per block for the float precisions (see above)
ENTRY_OVERHEAD = 200  # bytes counted per entry besides the states: key, OrderedDict node, tuple


class PrefixCache:
    """Least-recently-used {prefix digest: LSTM state}, at most `max_bytes` in all.

    Args:
        max_bytes: the bound; an entry larger than it is not stored.

    Example:
        >>> cache = PrefixCache(max_bytes=1000)
        >>> cache.put(b"a", "state a", 500)
        >>> cache.put(b"b", "state b", 500)  # 2 x 700 bytes > 1000: the least recently used goes
        >>> cache.get(b"a"), cache.get(b"b"), cache.entries, cache.nbytes
        (None, 'state b', 1, 700)
    """

    def __init__(self, max_bytes=64 * 2**20):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries = OrderedDict()  # key -> (state, bytes), least recently used first
        self.nbytes = 0
        self.hits = self.misses = 0

    @property
    def entries(self):
        return len(self._entries)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key, state, state_bytes):
        size = state_bytes + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        self._entries[key] = (state, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def clear(self):
        self._entries.clear()
        self.nbytes = 0


def prefix_keys(ids):
    """Digest of every prefix: keys[p] identifies ids[:p] (p = 1..len(ids)); keys[0] is None."""
    ids = np.asarray(ids, dtype=np.int64)
    hasher = hashlib.blake2b(digest_size=16)
    keys = [None]
    for p in range(len(ids)):
        hasher.update(ids[p:p + 1].tobytes())
        keys.append(hasher.digest())
    return keys


def prompt_state(step_model, ids, cache=None, block=BLOCK):
    """The LSTM state (one row) after reading `ids` from a zero state, through `cache` if given.

    Args:
        step_model: a step model (step_model.py).
        ids: the prompt's word ids (a list; at least one).
        cache: a PrefixCache or None. The numbers do not depend on it.
        block: words per fixed block for models that are not batch invariant.
    Returns:
        states (h, c); the top layer's output at the last word is h[-1].
    """
    ids = list(ids)
    total = len(ids)
    invariant = step_model.batch_invariant
    keys = prefix_keys(ids) if cache is not None else None
    start, states = 0, None
    if cache is not None:
        # invariant models may resume anywhere; others at a block end, or at the end of the very same prompt
        candidates = range(total, 0, -1) if invariant else [total, *range(total - total % block, 0, -block)]
        for position in candidates:
            states = cache.get(keys[position])
            if states is not None:
                start = position
                break
    if states is None:
        states = step_model.initial_states(1)
    if invariant:
        if start < total:
            _, states = step_model.advance([ids[start:]], states)
            if cache is not None:
                cache.put(keys[total], states, step_model.nbytes(states))
        return states
    last_block_end = total - total % block
    for end in range(start + block, last_block_end + 1, block):  # whole blocks after the cached prefix
        _, states = step_model.advance([ids[end - block:end]], states)
        if cache is not None:
            cache.put(keys[end], states, step_model.nbytes(states))
    if max(start, last_block_end) < total:  # the words after the last block end
        _, states = step_model.advance([ids[last_block_end:]], states)
        if cache is not None:
            cache.put(keys[total], states, step_model.nbytes(states))
    return states
