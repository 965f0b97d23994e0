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

Data-parallel training (distributed.py) shards both the same way: rank r of N takes the rows
[r * batch_size / N, (r + 1) * batch_size / N) of every single-process batch, so the N ranks together see exactly
the single-process batches and each rank's rows continue its own rows of the previous batch (each carries its own
LSTM state). With N = 3 in the picture above, rank 1 gets row 1 of every batch.
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

    The position (the tutorial's `current_idx`) persists across calls, like the tutorial's generator persists
    across epochs.

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
        self.position = 0
        self.steps_per_epoch = len(self.ids) // (batch_size * num_steps)
        if self.steps_per_epoch < 1:
            raise LstmlmError(f"corpus of {len(self.ids)} tokens is too short for one batch of "
                              f"{batch_size} x {num_steps} tokens")

    def next_batch(self):
        x = np.empty((self.batch_size, self.num_steps), dtype=self.ids.dtype)
        y = np.empty_like(x)
        for row in range(self.batch_size):
            if self.position + self.num_steps >= len(self.ids):
                self.position = 0  # wrap, exactly as the tutorial
            x[row] = self.ids[self.position : self.position + self.num_steps]
            y[row] = self.ids[self.position + 1 : self.position + self.num_steps + 1]
            self.position += self.skip_step
        return x, y

    def seek(self, batch):
        """Stand where `batch` batches from position 0 leave the generator, without generating them (random
        access, for a Keras PyDataset): the windows start at 0, skip_step, 2 skip_step, ... and wrap to 0 after
        the last start s with s + num_steps < len(ids), so row w of the whole sequence starts at (w mod P) skip_step.

        Example:
            >>> walked, jumped = WindowBatches(range(50), 3, 4, 5), WindowBatches(range(50), 3, 4, 5)
            >>> for _ in range(7):
            ...     _ = walked.next_batch()
            >>> jumped.seek(7)
            >>> [x.tolist() for x in (walked.next_batch()[0], jumped.next_batch()[0])] == 2 * [[[5, 6, 7, 8],
            ...     [10, 11, 12, 13], [15, 16, 17, 18]]]
            True
        """
        starts = (len(self.ids) - self.num_steps - 1) // self.skip_step + 1  # P
        self.position = (batch * self.batch_size) % starts * self.skip_step

    def epoch(self):
        for _ in range(self.steps_per_epoch):
            yield self.next_batch()


class Batches:
    """The training split cut the config's way: `stream` (truncated BPTT, state carried) or `window` (the
    tutorial's generator, a zero state per window).

    Args:
        config: the run's Config (batching, batch_size, num_steps, skip_step).
        ids: the training split as ids.
        rank, world_size: this process's share under data parallelism: the contiguous block of rows
            [rank * batch_size / world_size, (rank + 1) * batch_size / world_size) of every batch.

    Example:
        >>> from lstmlm.config import Config
        >>> batches = Batches(Config(batch_size=2, num_steps=2), list(range(9)))
        >>> batches.steps_per_epoch, batches.carries_state
        (2, True)
        >>> [x.tolist() for x, _ in Batches(Config(batch_size=2, num_steps=2), list(range(9)), 1, 2).epoch()]
        [[[4, 5]], [[6, 7]]]
    """

    def __init__(self, config, ids, rank=0, world_size=1):
        self.ids, self.batch_size, self.num_steps = ids, config.batch_size, config.num_steps
        if config.batch_size % world_size:
            raise LstmlmError(f"batch_size {config.batch_size} is not divisible by the {world_size} processes: "
                              "it is the total number of streams, and each process takes an equal share",
                              argument="batch_size")
        self.local_batch_size = config.batch_size // world_size
        self.rows = slice(rank * self.local_batch_size, (rank + 1) * self.local_batch_size)
        self.window = None
        if config.batching == "window":
            self.window = WindowBatches(ids, config.batch_size, config.num_steps, config.skip_step or config.num_steps)
            self.steps_per_epoch = self.window.steps_per_epoch
        else:
            if (len(ids) - 1) // config.batch_size < 1:  # stream_batches is lazy: check before anything is written
                raise LstmlmError(f"training split of {len(ids)} tokens is too short for one batch of "
                                  f"{config.batch_size} streams")
            self.steps_per_epoch = num_stream_batches(len(ids), config.batch_size, config.num_steps)
        self.carries_state = self.window is None

    @property
    def position(self):
        """Where the window generator stands (0 for streams, which restart every epoch)."""
        return self.window.position if self.window else 0

    def epoch(self, position=0):
        """The (inputs, targets) batches of one epoch (this rank's rows); window batching starts at `position`."""
        if self.window is None:
            batches = stream_batches(self.ids, self.batch_size, self.num_steps)
        else:
            self.window.position = position  # every rank runs the whole generator: the position stays global
            batches = self.window.epoch()
        if self.local_batch_size == self.batch_size:
            return batches
        return ((x[self.rows], y[self.rows]) for x, y in batches)
