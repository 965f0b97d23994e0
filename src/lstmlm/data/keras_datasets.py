"""A corpus as `keras.utils.PyDataset`s, for Keras' own `model.fit()` (docs/keras.md): the one module of the data
stage that imports Keras. The batches are batches.py's, cut the same two ways as `lstmlm train` cuts them:

- `windows`: the tutorial's KerasBatchGenerator (batches.WindowBatches), every window from a zero LSTM state;
  integer targets (sparse, not one-hot). Like the tutorial's generator, epoch e+1 continues where epoch e
  stopped (`.epoch` counts the full passes read; a fit() resumed by BackupAndRestore from epoch k on a new dataset
  sets `dataset.epoch = k` to continue there too); any batch can be read in any order (`fit(shuffle=True)` is
  fine; `shuffle=False` is the tutorial's order).
- `streams`: truncated BPTT (batches.stream_batches): row r of batch k+1 continues row r of batch k, for a
  `stateful=True` LSTMLanguageModel that carries its LSTM state from batch to batch, with the `ResetStates`
  callback (lstmlm.keras_fit) zeroing it at each epoch. The batches must be read in order: `fit(shuffle=False)`
  (a shuffled read is an LstmlmError, not a silently wrong state).

Both read a text file, or a bundled split named like 'ptb.train', through the corpus cache (corpus.text_ids), and
have `.vocabulary` and `.vocabulary_size`; pass one dataset's vocabulary (or the dataset) to the next.
"""

import numbers

import keras

from lstmlm.data.batches import WindowBatches, stream_batches
from lstmlm.data.corpus import text_ids
from lstmlm.data.vocabulary import Vocabulary
from lstmlm.errors import LstmlmError


class _TextDataset(keras.utils.PyDataset):
    """What both kinds share: the text's ids, its vocabulary and the batch shape."""

    batching = None  # 'window' or 'stream', Config.batching's names

    def __init__(self, text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_steps", num_steps), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise LstmlmError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(max_vocabulary_size, bool) or not isinstance(max_vocabulary_size, numbers.Integral) \
                or max_vocabulary_size < 0 or max_vocabulary_size == 1:
            raise LstmlmError(f"max_vocabulary_size must be 0 (every word) or at least 2, got {max_vocabulary_size!r}")
        vocabulary = getattr(vocabulary, "vocabulary", vocabulary)  # another dataset: its vocabulary
        if vocabulary is not None and not isinstance(vocabulary, Vocabulary):
            raise LstmlmError(f"vocabulary must be a Vocabulary or a dataset of lstmlm.data, got "
                              f"{type(vocabulary).__name__}")
        if vocabulary is not None and max_vocabulary_size:
            raise LstmlmError("max_vocabulary_size: give it or a vocabulary, not both (a given vocabulary is kept)")
        self.text, self.num_steps, self.batch_size, self.lowercase = str(text), num_steps, batch_size, lowercase
        self.ids, self.vocabulary = text_ids(text, vocabulary, max_vocabulary_size, lowercase)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def _check_index(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")


class WindowDataset(_TextDataset):
    """The tutorial's windows as a PyDataset (see `windows`)."""

    batching = "window"

    def __init__(self, text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, skip_step,
                 **kwargs):
        super().__init__(text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, **kwargs)
        self.skip_step = skip_step or num_steps
        self.windows = WindowBatches(self.ids, batch_size, num_steps, self.skip_step)
        self.epoch = 0  # full passes read so far: where the next epoch's windows start (settable, for a resume)
        self.read = set()  # the batches read since the last on_epoch_end

    def __len__(self):
        return self.windows.steps_per_epoch

    def __getitem__(self, index):
        self._check_index(index)
        self.read.add(index)
        self.windows.seek(self.epoch * len(self) + index)
        return self.windows.next_batch()

    def on_epoch_end(self):
        # Keras also ends an "epoch" after peeking at batch 0 (to build the training function): only a full pass
        # moves the windows on
        if len(self.read) == len(self):
            self.epoch += 1
        self.read = set()


class StreamDataset(_TextDataset):
    """The state-carrying streams as a PyDataset (see `streams`)."""

    batching = "stream"

    def __init__(self, text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, **kwargs):
        super().__init__(text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, **kwargs)
        self.batches = list(stream_batches(self.ids, batch_size, num_steps))  # views of the ids, no copies
        self.next_index = 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        self._check_index(index)
        if index not in (0, self.next_index - 1, self.next_index):  # the first, the same again, or the next
            raise LstmlmError(f"streams: batch {index} read after batch {self.next_index - 1}: each batch continues "
                              "the one before it (the LSTM state is carried), so read them in order: "
                              "fit(..., shuffle=False)")
        self.next_index = index + 1
        return self.batches[index]


def windows(text, num_steps=30, batch_size=20, max_vocabulary_size=0, vocabulary=None, skip_step=0,
            lowercase=False, **kwargs):
    """The tutorial's KerasBatchGenerator as a `keras.utils.PyDataset` of (inputs, targets) int32 batches.

    Args:
        text: a UTF-8 text file (one sentence per line), or a bundled split: 'ptb.train', 'ptb.valid', 'ptb.test'.
        num_steps, batch_size: each batch is `batch_size` windows of `num_steps` words (the tutorial: 30, 20).
        max_vocabulary_size: without `vocabulary`, build this text's vocabulary, at most this many words
            (0 = every word).
        vocabulary: a Vocabulary, or another dataset whose vocabulary to use (validation, test).
        skip_step: how far each window starts after the one before (0 = num_steps, the tutorial's training).
        lowercase: lower-case the text.
        **kwargs: keras.utils.PyDataset's (workers, use_multiprocessing, max_queue_size).

    Example:
        >>> train = windows("ptb.valid", num_steps=30, batch_size=20)
        >>> x, y = train[0]
        >>> len(train), x.shape, train.vocabulary_size, (x[0, 1:] == y[0, :-1]).all()
        (122, (20, 30), 6022, np.True_)
    """
    return WindowDataset(text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, skip_step,
                         **kwargs)


def streams(text, num_steps=20, batch_size=20, max_vocabulary_size=0, vocabulary=None, lowercase=False, **kwargs):
    """`batch_size` contiguous streams of the text as a `keras.utils.PyDataset`, `num_steps` words of each per batch,
    for a `stateful=True` LSTMLanguageModel of that batch size (`fit(..., shuffle=False)`, `ResetStates()`).

    Args:
        text, max_vocabulary_size, vocabulary, lowercase, **kwargs: as in `windows`.
        num_steps, batch_size: the truncated-BPTT length and the number of streams (Zaremba et al.'s: 20, 20).

    Example:
        >>> train = streams("ptb.valid", num_steps=20, batch_size=20)
        >>> (x0, _), (x1, _) = train[0], train[1]
        >>> len(train), x0.shape, (train.ids[20:40] == x1[0]).all()
        (185, (20, 20), np.True_)
    """
    return StreamDataset(text, num_steps, batch_size, max_vocabulary_size, vocabulary, lowercase, **kwargs)
