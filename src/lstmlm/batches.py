"""Id arrays -> (inputs, targets) batches. Targets are always the inputs shifted by one word.

Two ways to cut a corpus:

stream (truncated BPTT, Zaremba et al. / TF ptb_word_lm / pytorch word_language_model): the corpus is cut into
`batch_size` contiguous streams, one per batch row, and each batch takes the next `num_steps` words of every
stream, so row r of batch k+1 continues exactly where row r of batch k stopped and the LSTM state is carried:

    corpus  a b c d e f g h i j k l m n o p q r s t u v w x y      (25 ids, batch_size 3, num_steps 3)
    row 0   a b c | d e f | g h           targets  b c d | e f g | h i
    row 1   i j k | l m n | o p                    j k l | m n o | p q
    row 2   q r s | t u v | w x                    r s t | u v w | x y
            batch 0 batch 1 batch 2 (short)

window (the tutorial's KerasBatchGenerator): row i of a batch is the window data[idx : idx+num_steps] with
idx advancing by skip_step after every row (so consecutive windows go to consecutive rows of the same batch),
wrapping to 0 when idx + num_steps >= len(data); every window starts from a zero state.
"""

import numpy as np

from lstmlm.errors import LstmlmError


def stream_batches(ids, batch_size, num_steps, drop_last=False):
    """Yield (inputs, targets), each (batch_size, <= num_steps) int arrays, streams contiguous across batches.

    Example:
        >>> [x.tolist() for x, _ in stream_batches(list(range(9)), 2, 2)]
        [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]
    """
    ids = np.asarray(ids)
    length = (len(ids) - 1) // batch_size
    if length < 1:
        raise LstmlmError(f"corpus of {len(ids)} tokens is too short for batch size {batch_size}")
    inputs = ids[: batch_size * length].reshape(batch_size, length)
    targets = ids[1 : batch_size * length + 1].reshape(batch_size, length)
    for start in range(0, length, num_steps):
        stop = min(start + num_steps, length)
        if drop_last and stop - start < num_steps:
            return
        yield inputs[:, start:stop], targets[:, start:stop]


def num_stream_batches(num_tokens, batch_size, num_steps, drop_last=False):
    length = (num_tokens - 1) // batch_size
    return length // num_steps if drop_last else -(-length // num_steps)


class WindowBatches:
    """The tutorial's KerasBatchGenerator with integer targets (sparse, not one-hot).

    The position persists across calls, like the tutorial's generator persists across epochs.

    Args:
        ids: the corpus as ids.
        batch_size, num_steps: window batch shape.
        skip_step: how far the start advances after each row (the tutorial trains with skip_step = num_steps).
    """

    def __init__(self, ids, batch_size, num_steps, skip_step):
        self.ids = np.asarray(ids)
        if len(self.ids) <= num_steps + 1:
            raise LstmlmError(f"corpus of {len(self.ids)} tokens is too short for num_steps {num_steps}")
        self.batch_size, self.num_steps, self.skip_step = batch_size, num_steps, skip_step
        self.current_idx = 0
        self.steps_per_epoch = len(self.ids) // (batch_size * num_steps)
        if self.steps_per_epoch < 1:
            raise LstmlmError(f"corpus of {len(self.ids)} tokens is too short for one batch of "
                              f"{batch_size} x {num_steps} tokens")

    def next_batch(self):
        x = np.empty((self.batch_size, self.num_steps), dtype=self.ids.dtype)
        y = np.empty_like(x)
        for row in range(self.batch_size):
            if self.current_idx + self.num_steps >= len(self.ids):
                self.current_idx = 0  # wrap, exactly as the tutorial
            x[row] = self.ids[self.current_idx : self.current_idx + self.num_steps]
            y[row] = self.ids[self.current_idx + 1 : self.current_idx + self.num_steps + 1]
            self.current_idx += self.skip_step
        return x, y

    def epoch(self):
        for _ in range(self.steps_per_epoch):
            yield self.next_batch()
