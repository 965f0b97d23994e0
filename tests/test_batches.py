"""Batching: stream (truncated BPTT) layout and the tutorial's window generator, exactly."""

import numpy as np
import pytest

from lstmlm.data.batches import WindowBatches, num_stream_batches, stream_batches
from lstmlm.errors import LstmlmError


class TutorialGenerator:
    """The tutorial's KerasBatchGenerator, with integer targets instead of one-hot (the only change)."""

    def __init__(self, data, num_steps, batch_size, skip_step):
        self.data, self.num_steps, self.batch_size, self.skip_step = data, num_steps, batch_size, skip_step
        self.current_idx = 0
        self.wraps = 0  # (test bookkeeping only)

    def generate(self):
        x = np.zeros((self.batch_size, self.num_steps))
        y = np.zeros((self.batch_size, self.num_steps))
        while True:
            for i in range(self.batch_size):
                if self.current_idx + self.num_steps >= len(self.data):
                    self.current_idx = 0
                    self.wraps += 1
                x[i, :] = self.data[self.current_idx:self.current_idx + self.num_steps]
                y[i, :] = self.data[self.current_idx + 1:self.current_idx + self.num_steps + 1]
                self.current_idx += self.skip_step
            yield x.copy(), y.copy()


def test_docstring_example():
    assert [x.tolist() for x, _ in stream_batches(list(range(9)), 2, 2)] == [[[0, 1], [4, 5]], [[2, 3], [6, 7]]]


@pytest.mark.parametrize("n, batch_size, num_steps", [(25, 3, 3), (100, 4, 7), (57, 1, 10), (10, 9, 4)])
def test_stream_batches_are_contiguous_and_shifted(n, batch_size, num_steps):
    ids = np.arange(1000, 1000 + n)
    batches = list(stream_batches(ids, batch_size, num_steps))
    length = (n - 1) // batch_size
    assert len(batches) == num_stream_batches(n, batch_size, num_steps) == -(-length // num_steps)
    for x, y in batches:
        assert x.shape == y.shape and x.shape[0] == batch_size and 1 <= x.shape[1] <= num_steps
        assert np.array_equal(y, x + 1)  # targets are the inputs shifted by one word (ids are consecutive)
    for k in range(len(batches) - 1):  # row r of batch k+1 continues row r of batch k
        assert np.array_equal(batches[k + 1][0][:, 0], batches[k][0][:, -1] + 1)
        assert np.array_equal(batches[k + 1][0][:, 0], batches[k][1][:, -1])
    rows = np.concatenate([x for x, _ in batches], axis=1)  # (batch_size, length)
    assert rows.shape == (batch_size, length)
    # each row is a contiguous stream, and the streams laid end to end reproduce the corpus
    assert np.array_equal(rows.reshape(-1), ids[: batch_size * length])
    targets = np.concatenate([y for _, y in batches], axis=1)
    assert np.array_equal(targets.reshape(-1), ids[1: batch_size * length + 1])


def test_stream_batches_with_repeated_ids_use_real_shift():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=200)
    x_all = np.concatenate([x for x, _ in stream_batches(ids, 4, 6)], axis=1)
    y_all = np.concatenate([y for _, y in stream_batches(ids, 4, 6)], axis=1)
    length = 199 // 4
    for r in range(4):
        assert np.array_equal(x_all[r], ids[r * length:(r + 1) * length])
        assert np.array_equal(y_all[r], ids[r * length + 1:(r + 1) * length + 1])


def test_stream_drop_last():
    batches = list(stream_batches(np.arange(25), 3, 3, drop_last=True))
    assert len(batches) == num_stream_batches(25, 3, 3, drop_last=True) == 2
    assert all(x.shape == (3, 3) for x, _ in batches)


def test_stream_too_short():
    with pytest.raises(LstmlmError, match="too short for batch size 5"):
        list(stream_batches(np.arange(5), 5, 3))


@pytest.mark.parametrize("n, batch_size, num_steps, skip_step", [
    (103, 4, 7, 7),     # the tutorial's setting: skip = num_steps
    (50, 3, 5, 2),      # overlapping windows
    (61, 5, 6, 9),      # gaps between windows
    (40, 2, 15, 4),     # one batch per epoch, wraps every few rows
])
def test_window_batches_reproduce_the_tutorial_generator(n, batch_size, num_steps, skip_step):
    data = np.random.default_rng(n).integers(0, 1000, size=n)
    ours = WindowBatches(data, batch_size, num_steps, skip_step)
    tutorial = TutorialGenerator(data, num_steps, batch_size, skip_step)
    reference = tutorial.generate()
    for _ in range(3):  # three "epochs": the position persists across them, as the tutorial's generator
        for x, y in ours.epoch():
            rx, ry = next(reference)
            assert np.array_equal(x, rx) and np.array_equal(y, ry)
            assert np.array_equal(x[:, 1:], y[:, :-1])
            assert ours.position == tutorial.current_idx
    for _ in range(20):
        rx, ry = next(reference)
        x, y = ours.next_batch()
        assert np.array_equal(x, rx) and np.array_equal(y, ry)
    assert tutorial.wraps >= 2  # every case went round the corpus more than once


def test_window_wrap_position_explicitly():
    data = np.arange(10)
    window = WindowBatches(data, 2, 3, 3)
    x, y = window.next_batch()
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and y.tolist() == [[1, 2, 3], [4, 5, 6]]
    x, y = window.next_batch()
    # idx 6: 6 + 3 < 10 -> [6, 7, 8]; idx 9: 9 + 3 >= 10 -> wraps to 0
    assert x.tolist() == [[6, 7, 8], [0, 1, 2]] and y.tolist() == [[7, 8, 9], [1, 2, 3]]
    assert window.position == 3
    assert window.steps_per_epoch == 10 // 6


def test_window_too_short():
    with pytest.raises(LstmlmError, match="too short"):
        WindowBatches(np.arange(8), 2, 7, 7)
    with pytest.raises(LstmlmError, match="too short for one batch of 4 x 5"):
        WindowBatches(np.arange(12), 4, 5, 5)
