"""One epoch: `Epoch` is where it stands (batches done, running sums, the LSTM states carried between batches),
`train_epoch` trains its batches (pytorch/examples' `train()`), `history_row` is its line in history.csv.
"""

import copy
import math
import time

from lstmlm import torch_backend
from lstmlm.errors import LstmlmError
from lstmlm.failpoints import failpoint
from lstmlm.metrics import perplexity
from lstmlm.training import signals
from lstmlm.training.trainer import train_step

HISTORY_FIELDS = ["epoch", "train_loss", "train_perplexity", "train_accuracy", "valid_loss", "valid_perplexity",
                  "valid_accuracy", "valid_top5_accuracy", "learning_rate", "train_tokens", "tokens_per_second",
                  "epoch_seconds", "wall_seconds", "valid_bits_per_character", "valid_word_perplexity"]
# The last two compare across tokenizers (metrics.comparable); a history.csv written before them has neither
# column and still reads (run_directory.read_history), and a resumed run leaves them empty in its old rows.

# A model that does worse than guessing uniformly over the vocabulary by this many nats has diverged.
DIVERGENCE_MARGIN = 1.0


def divergence_bound(vocabulary_size):
    """The loss (nats per token) above which a run has diverged: ln(vocabulary) + DIVERGENCE_MARGIN.

    Example:
        >>> round(divergence_bound(10000), 3)   # uniform over PTB's 10,000 words is 9.210 nats
        10.21
    """
    return math.log(vocabulary_size) + DIVERGENCE_MARGIN


class Epoch:
    """Where one epoch stands: batches done, the running sums (kept on the device), the LSTM states.

    Args:
        number: the epoch (1-based).
        device: where the sums live.
        batches_done, sums, states: a resumed epoch's saved progress (defaults: a fresh epoch).
        window_position: where the window generator stood when the epoch began (window batching).
    """

    def __init__(self, number, device, batches_done=0, sums=None, states=None, window_position=0):
        import torch

        sums = sums or {"loss": 0.0, "hits": 0.0, "tokens": 0}
        self.number, self.batches_done, self.states = number, batches_done, states
        self.loss = torch.tensor(float(sums["loss"]), dtype=torch.float64, device=device)
        self.hits = torch.tensor(float(sums["hits"]), dtype=torch.float64, device=device)
        self.tokens = int(sums["tokens"])
        self.window_position = window_position
        self.window_position_after = window_position  # set when the epoch's batches are done
        self.learning_rate = 0.0
        self.started, self.train_seconds, self.tokens_this_session = time.time(), 0.0, 0
        self.skipped_steps, self.skipped_in_a_row = 0, 0
        self.saved = False  # True once the epoch's checkpoint and state.json are written

    def add(self, loss, hits, tokens):
        self.loss += loss.detach().double() * tokens
        self.hits += hits.double()
        self.tokens += tokens
        self.tokens_this_session += tokens
        self.batches_done += 1
        self.skipped_in_a_row = 0

    def skip(self):
        """A batch whose step was skipped (non-finite loss or gradient): passed over, not counted."""
        self.batches_done += 1
        self.skipped_steps += 1
        self.skipped_in_a_row += 1

    def mean_loss(self):
        return self.loss.item() / max(1, self.tokens)

    def accuracy(self):
        return self.hits.item() / max(1, self.tokens)

    def sums(self):
        return {"loss": self.loss.item(), "hits": self.hits.item(), "tokens": self.tokens}

    def tokens_per_second(self):
        return self.tokens_this_session / max(time.time() - self.started, 1e-9)

    def combine(self, coordinator):
        """Sum loss, hits and tokens over the processes, once, when the epoch's batches are done: every process
        then holds the epoch's totals (a resumed epoch's saved totals start on the writer only)."""
        loss, hits, tokens, session = coordinator.reduce(
            [self.loss.item(), self.hits.item(), self.tokens, self.tokens_this_session], "summing the epoch")
        self.loss.fill_(loss)
        self.hits.fill_(hits)
        self.tokens, self.tokens_this_session = int(tokens), int(session)

    def snapshot(self, coordinator):
        """A copy holding every process's totals and LSTM states (rows in the single-process order), for a
        mid-epoch checkpoint; this epoch goes on unchanged. Every process must call it."""
        import torch

        snapshot = copy.copy(self)
        loss, hits, tokens = coordinator.reduce([self.loss.item(), self.hits.item(), self.tokens],
                                                "summing the epoch so far")
        snapshot.loss, snapshot.hits = (torch.tensor(value, dtype=torch.float64) for value in (loss, hits))
        snapshot.tokens = int(tokens)
        if self.states is not None:
            flat = coordinator.gather_rows([s for pair in self.states for s in pair])
            snapshot.states = [tuple(flat[2 * i: 2 * i + 2]) for i in range(len(self.states))]
        return snapshot


def train_epoch(trainer, batches, epoch, rate_at, should_stop=None):
    """Train on one epoch's batches from `epoch.batches_done` on; returns `epoch`, updated.

    Steps with a non-finite loss or gradient are skipped and counted; `max_nonfinite_steps` of them in a row
    raise LstmlmError. A stop signal (Ctrl-C, SIGTERM, SIGHUP) takes effect between steps (signals.py).

    Args:
        trainer: the Trainer.
        batches: the epoch's (inputs, targets) batches, from the first (earlier ones are skipped on resume).
        epoch: an Epoch; its `states` are carried from batch to batch (None: a zero state per batch).
        rate_at: function of the batch index -> learning rate.
        should_stop: function of `epoch`, called after every batch; True ends the epoch early.
    """
    limit = trainer.config.max_nonfinite_steps
    for index, (x, y) in enumerate(batches):
        if index < epoch.batches_done:
            continue
        with signals.step():  # a stop signal waits until the step and its bookkeeping agree
            failpoint("step")
            trainer.seed_dropout(epoch.number, index)
            epoch.learning_rate = rate_at(index)
            trainer.set_learning_rate(epoch.learning_rate)
            loss, hits, states = train_step(trainer, x, y, epoch.states)
            if not trainer.last_step_finite:
                epoch.skip()  # the states from before this batch are kept: the new ones may be nan
            else:
                if epoch.states is not None:
                    epoch.states = torch_backend.repackage_hidden(states)
                epoch.add(loss, hits, x.size)
        if epoch.skipped_in_a_row >= limit:
            raise LstmlmError(
                f"epoch {epoch.number}, batch {index + 1}: {limit} steps in a row had a non-finite loss or "
                f"gradient (nan/inf), {epoch.skipped_steps} this epoch; training stopped, the last checkpoint "
                f"and model.keras are unchanged; lower --learning-rate (now {epoch.learning_rate:g}) or set "
                f"--clip-norm (now {trainer.config.clip_norm:g})")
        if should_stop is not None and should_stop(epoch):
            break
    epoch.train_seconds = time.time() - epoch.started
    return epoch


def history_row(epoch, valid, wall_seconds):
    """The history.csv row of a finished epoch (loss in nats, perplexity = exp(loss))."""
    return {"epoch": epoch.number, "train_loss": round(epoch.mean_loss(), 5),
            "train_perplexity": round(perplexity(epoch.mean_loss()), 3),
            "train_accuracy": round(epoch.accuracy(), 5),
            "valid_loss": round(valid["loss"], 5), "valid_perplexity": round(valid["perplexity"], 3),
            "valid_accuracy": round(valid["accuracy"], 5), "valid_top5_accuracy": round(valid["top5_accuracy"], 5),
            "learning_rate": float(f"{epoch.learning_rate:.6g}"), "train_tokens": epoch.tokens,
            "tokens_per_second": round(epoch.tokens_this_session / max(epoch.train_seconds, 1e-9), 1),
            "epoch_seconds": round(time.time() - epoch.started, 2), "wall_seconds": round(wall_seconds, 2),
            "valid_bits_per_character": round(valid.get("bits_per_character", math.nan), 5),
            "valid_word_perplexity": round(valid.get("word_perplexity", math.nan), 3)}
