"""Training: a Keras model, a PyTorch-backend training loop (the pattern of the Keras guide "Writing a training
loop from scratch in PyTorch"), truncated BPTT with the state carried across batches, per-epoch validation,
checkpoints, history, resume and a clean Ctrl-C.

Why a custom loop rather than model.fit: carrying the LSTM state between batches (and resetting it per epoch)
is a loop concern, and torch's fused optimizers with the fused LSTM kernel run the step at the speed of
hand-written PyTorch. The model, its weights and its files stay plain Keras.

The shape is pytorch/examples' word_language_model: `train_step` runs one batch, `train_epoch` one epoch, and
`train` is the epoch loop around them. A `Trainer` owns what a step needs (model, optimizer, precision,
device); `Checkpoints` owns the run directory's files; the learning rate is a pure function (schedule.py).

Data parallelism (torchrun; distributed.py): every rank runs this same loop on its block of each batch's rows
(batches.py), with its own LSTM states and dropout masks; DDP averages the gradients during backward, so
N ranks x B/N streams take the step one process takes with B streams (each rank's loss is the mean over its
equal share of the tokens, and the mean of those means is the mean over all of them; clipping then sees the
averaged gradient). After every batch the ranks agree on what only one of them may have seen (a stop signal, a
periodic checkpoint due, the time budget) and on one clock for the schedule; they sum the epoch's loss, hits and
tokens at its end; rank 0 alone validates (the others wait), logs and writes every file. In one process none of
this runs.
"""

import copy
import math
import platform
import shlex
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np

from lstmlm.training import distributed
from lstmlm import run_directory as rd
from lstmlm import torch_backend
from lstmlm.training import signals
from lstmlm.model.adaptive_softmax import resolve_cutoffs
from lstmlm.data.batches import Batches
from lstmlm.training.budget import Budget
from lstmlm.training.checkpoints import Checkpoints
from lstmlm.config import Config
from lstmlm.data.corpus import load_corpus
from lstmlm.errors import LstmlmError
from lstmlm.inference.evaluate import evaluate_ids
from lstmlm.failpoints import failpoint
from lstmlm.machine import cpu_info
from lstmlm.metrics import perplexity
from lstmlm.model.lstm_language_model import build_model
from lstmlm.training.optimizer import load_optimizer_state, make_optimizer, optimizer_state
from lstmlm.precision import training_lstm_precision
from lstmlm.training.progress_bar import Progress
from lstmlm.training.schedule import learning_rate

HISTORY_FIELDS = ["epoch", "train_loss", "train_perplexity", "train_accuracy", "valid_loss", "valid_perplexity",
                  "valid_accuracy", "valid_top5_accuracy", "learning_rate", "train_tokens", "tokens_per_second",
                  "epoch_seconds", "wall_seconds"]

# Dropout seeds of rank r are offset by r * this (mod 2**32): rank 0 draws the single-process masks.
RANK_SEED_STRIDE = 0x9E3779B1


def versions():
    import torch

    return {"lstmlm": __import__("lstmlm").__version__, "keras": keras.__version__, "torch": torch.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu": cpu_info()}


# ---- one step --------------------------------------------------------------------------------------------
class Trainer:
    """What one optimisation step needs: the model, its optimizer, the precision and the device.

    Args:
        config: the run's Config (optimizer, learning_rate, clip_norm, sum_over_time).
        model: a built LSTMLanguageModel.
        precision: 'float32' or 'bfloat16' (resolved; see torch_backend.resolve_precision).

    Example:
        >>> from lstmlm.config import Config
        >>> config = Config(hidden_size=8, num_steps=5, batch_size=2, precision="float32")
        >>> trainer = Trainer(config, build_model(config, 30), "float32")
        >>> x = np.arange(10).reshape(2, 5) % 30
        >>> loss, hits, states = train_step(trainer, x, (x + 1) % 30, trainer.model.initial_states(2))
        >>> 2.5 < float(loss) < 4.5   # about log(30) = 3.4 nats before any learning
        True
    """

    def __init__(self, config, model, precision):
        self.config, self.model, self.precision = config, model, precision
        self.lstm_precision = training_lstm_precision(precision, config.optimizer)
        self.device = torch_backend.device_type()
        self.parameters = [v.value for v in model.trainable_variables]
        self.optimizer = make_optimizer(config, self.parameters)
        self.last_step_finite = True
        self.rank, self.data_parallel = distributed.rank(), distributed.world_size() > 1
        # (token_ids, states, training) -> (logits, states); under DDP the same call, gradients averaged
        self.forward = distributed.data_parallel(model) if self.data_parallel else model.call_with_states
        # the adaptive softmax's training path: (token_ids, targets, states, training) -> (log p(target), hits,
        # states), only each target's cluster computed (adaptive_softmax.py); under DDP through the same module
        self.forward_targets = model.target_log_probabilities
        if self.data_parallel:
            self.forward_targets = lambda x, y, states, training: self.forward(x, states, training, targets=y)

    def set_learning_rate(self, rate):
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def seed_dropout(self, epoch, batch):
        """Dropout masks depend only on (seed, rank, epoch, batch): a resumed run draws the unbroken run's masks,
        and each rank of a data-parallel run draws its own (rank 0: the single-process masks)."""
        for owner in [self.model, *self.model.lstm_layers]:
            seed = ((owner.seed or 0) + self.rank * RANK_SEED_STRIDE) % 2**32
            owner.seed_generator.state.assign(np.array([seed, epoch * 1_000_003 + batch], dtype="uint32"))

    def optimizer_state(self):
        return optimizer_state(self.optimizer)

    def load_optimizer_state(self, arrays, groups):
        load_optimizer_state(self.optimizer, arrays, groups)

    @staticmethod
    def states_to_arrays(states):
        return {f"{kind}{i}": s.detach().float().cpu().numpy() for i, pair in enumerate(states)
                for kind, s in zip("hc", pair)}

    def states_from_arrays(self, arrays, rows=slice(None)):
        """The saved (h, c) per layer; `rows`: this rank's block of the saved single-process rows."""
        import torch

        return [tuple(torch.as_tensor(arrays[f"{kind}{i}"][rows], device=self.device) for kind in "hc")
                for i in range(self.config.num_layers)]


def train_step(trainer, x, y, states):
    """One optimisation step on a (batch, time) batch; returns (mean loss tensor, top-1 hits tensor, states).

    A step whose loss or gradient norm is not finite changes no weight and sets `trainer.last_step_finite`
    to False. The loss is the mean cross-entropy in nats over the batch's tokens (sparse targets, logits: the same
    mathematics as the tutorial's softmax + one-hot categorical cross-entropy). With `sum_over_time` the
    gradient is that of the loss summed over time and averaged over the batch (mean x time steps).
    """
    import torch

    config = trainer.config
    x = torch.as_tensor(x, dtype=torch.long, device=trainer.device)  # (batch, time)
    y = torch.as_tensor(y, dtype=torch.long, device=trainer.device).reshape(-1)  # (batch * time,)
    adaptive = trainer.model.softmax == "adaptive"
    with torch_backend.precision_context(trainer.precision), \
            torch_backend.float32_lstm(trainer.lstm_precision == "float32"):
        if adaptive:  # the same exact loss, computing only each target's cluster (adaptive_softmax.py)
            target_log_probs, hits, new_states = trainer.forward_targets(x, y, states, training=True)
        else:
            logits, new_states = trainer.forward(x, states, training=True)  # (batch, time, vocab)
    if adaptive:
        loss = -target_log_probs.mean()
    else:  # the loss and the top-1 hits (target logit = the row's maximum) in one pass, float32 arithmetic
        loss, hits = torch_backend.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
    trainer.optimizer.zero_grad(set_to_none=True)
    (loss * x.shape[1] if config.sum_over_time else loss).backward()
    if config.clip_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(trainer.parameters, config.clip_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in trainer.parameters if p.grad is not None],
                                             foreach=True)
    # A nan/inf loss or gradient would poison every weight: skip the update (the caller counts it). Under DDP
    # the norm is that of the averaged gradient, the same on every rank (a rank's non-finite loss makes it
    # non-finite), so every rank skips the same steps; its own loss alone would split the replicas.
    finite = torch.isfinite(norm) if trainer.data_parallel else torch.isfinite(loss) & torch.isfinite(norm)
    trainer.last_step_finite = bool(finite)
    if trainer.last_step_finite:
        trainer.optimizer.step()
    return loss.detach(), hits, new_states


# ---- one epoch -------------------------------------------------------------------------------------------
class EpochProgress:
    """Where one epoch stands: batches done, the running sums (kept on the device), the LSTM states.

    Args:
        epoch: the epoch (1-based).
        device: where the sums live.
        batches_done, sums, states: a resumed epoch's saved progress (defaults: a fresh epoch).
        window_position: where the window generator stood when the epoch began (window batching).
    """

    def __init__(self, epoch, device, batches_done=0, sums=None, states=None, window_position=0):
        import torch

        sums = sums or {"loss": 0.0, "hits": 0.0, "tokens": 0}
        self.epoch, self.batches_done, self.states = epoch, batches_done, states
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

    def combine_ranks(self):
        """Sum loss, hits and tokens over the ranks, once, when the epoch's batches are done: every rank then
        holds the epoch's totals (a resumed epoch's saved totals start on rank 0 only). No-op in one process."""
        if distributed.world_size() == 1:
            return
        loss, hits, tokens, session = distributed.all_reduce(
            [self.loss.item(), self.hits.item(), self.tokens, self.tokens_this_session], what="summing the epoch")
        self.loss.fill_(loss)
        self.hits.fill_(hits)
        self.tokens, self.tokens_this_session = int(tokens), int(session)

    def combined(self):
        """A copy holding every rank's totals and every rank's LSTM states (rows in the single-process order),
        for a mid-epoch checkpoint; this progress goes on unchanged. Every rank must call it. Itself in one
        process."""
        if distributed.world_size() == 1:
            return self
        import torch

        snapshot = copy.copy(self)
        loss, hits, tokens = distributed.all_reduce([self.loss.item(), self.hits.item(), self.tokens],
                                                    what="summing the epoch so far")
        snapshot.loss, snapshot.hits = (torch.tensor(value, dtype=torch.float64) for value in (loss, hits))
        snapshot.tokens = int(tokens)
        if self.states is not None:
            flat = distributed.gather_rows([s for pair in self.states for s in pair])
            snapshot.states = [tuple(flat[2 * i : 2 * i + 2]) for i in range(len(self.states))]
        return snapshot


def train_epoch(trainer, batches, progress, rate_at, should_stop=None):
    """Train on one epoch's batches from `progress.batches_done` on; returns `progress`, updated.

    Steps with a non-finite loss or gradient are skipped and counted; `max_nonfinite_steps` of them in a row
    raise LstmlmError. A stop signal (Ctrl-C, SIGTERM, SIGHUP) takes effect between steps (signals.py).

    Args:
        trainer: the Trainer.
        batches: the epoch's (inputs, targets) batches, from the first (earlier ones are skipped on resume).
        progress: an EpochProgress; its `states` are carried from batch to batch (None: a zero state per batch).
        rate_at: function of the batch index -> learning rate.
        should_stop: function of `progress`, called after every batch; True ends the epoch early.
    """
    limit = trainer.config.max_nonfinite_steps
    for index, (x, y) in enumerate(batches):
        if index < progress.batches_done:
            continue
        with signals.step():  # a stop signal waits until the step and its bookkeeping agree
            failpoint("step")
            trainer.seed_dropout(progress.epoch, index)
            progress.learning_rate = rate_at(index)
            trainer.set_learning_rate(progress.learning_rate)
            loss, hits, states = train_step(trainer, x, y, progress.states)
            if not trainer.last_step_finite:
                progress.skip()  # the states from before this batch are kept: the new ones may be nan
            else:
                if progress.states is not None:
                    progress.states = torch_backend.repackage_hidden(states)
                progress.add(loss, hits, x.size)
        if progress.skipped_in_a_row >= limit:
            raise LstmlmError(
                f"epoch {progress.epoch}, batch {index + 1}: {limit} steps in a row had a non-finite loss or "
                f"gradient (nan/inf), {progress.skipped_steps} this epoch; training stopped, the last checkpoint "
                f"and model.keras are unchanged; lower --learning-rate (now {progress.learning_rate:g}) or set "
                f"--clip-norm (now {trainer.config.clip_norm:g})")
        if should_stop is not None and should_stop(progress):
            break
    progress.train_seconds = time.time() - progress.started
    return progress


def history_row(progress, valid, wall_seconds):
    """The history.csv row of a finished epoch (loss in nats, perplexity = exp(loss))."""
    return {"epoch": progress.epoch, "train_loss": round(progress.mean_loss(), 5),
            "train_perplexity": round(perplexity(progress.mean_loss()), 3),
            "train_accuracy": round(progress.accuracy(), 5),
            "valid_loss": round(valid["loss"], 5), "valid_perplexity": round(valid["perplexity"], 3),
            "valid_accuracy": round(valid["accuracy"], 5), "valid_top5_accuracy": round(valid["top5_accuracy"], 5),
            "learning_rate": float(f"{progress.learning_rate:.6g}"), "train_tokens": progress.tokens,
            "tokens_per_second": round(progress.tokens_this_session / max(progress.train_seconds, 1e-9), 1),
            "epoch_seconds": round(time.time() - progress.started, 2), "wall_seconds": round(wall_seconds, 2)}


# ---- the run ---------------------------------------------------------------------------------------------
class TrainingRun:
    """Everything the epoch loop needs, opened from a Config (new run) or a run directory (--resume)."""

    def __init__(self, config, out, info, state, corpus, model, precision, log):
        self.config, self.out, self.info, self.state, self.log = config, out, info, state, log
        self.vocabulary, self.valid_ids = corpus.vocabulary, corpus["valid"]
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.batches = Batches(config, corpus["train"], self.rank, self.world_size)
        self.trainer = Trainer(config, model, precision)
        self.checkpoints = Checkpoints(out, config.keep_checkpoints)
        self.history, self.epochs_done = [], 0
        self.budget = Budget(config.max_minutes)
        self.agreed_elapsed = 0.0  # data parallel: the wall time the ranks agreed on last (agree())
        self.last_checkpoint = time.time()
        if state is not None:
            self.trainer.load_optimizer_state(rd.load_arrays(out / state["optimizer"]), state["optimizer_groups"])
            self.history = rd.read_history(out / rd.HISTORY)[: state["epoch"]]
            self.epochs_done = state["epoch"]
            self.budget.seconds_before = state["wall_seconds"]
            self.batches.epoch(state["window_position"])  # sets the window generator's position

    @property
    def model(self):
        return self.trainer.model

    def start_epoch(self, epoch):
        """A fresh EpochProgress, or the saved progress of the epoch an interrupted run was in."""
        state, device = self.state, self.trainer.device
        if state is not None and epoch == state["epoch"] + 1 and state["batch"]:
            states = None
            if self.batches.carries_state:
                states = self.trainer.states_from_arrays(rd.load_arrays(self.out / state["states"]), self.batches.rows)
            sums = state["partial_sums"] if self.rank == 0 else None  # combine_ranks() adds the others' share
            progress = EpochProgress(epoch, device, state["batch"], sums, states, state["window_position"])
            # the rate of the last batch done: the history row's rate if no batch is left to train
            progress.learning_rate = self.rate_at(epoch)(state["batch"] - 1)
            return progress
        states = self.model.initial_states(self.batches.local_batch_size) if self.batches.carries_state else None
        return EpochProgress(epoch, device, states=states, window_position=self.batches.position)

    def elapsed(self):
        """Wall time for the schedule: this process's clock, or under DDP the time the ranks agreed on last."""
        return self.budget.elapsed() if self.world_size == 1 else self.agreed_elapsed

    def agree(self, *flags):
        """Under DDP: each flag's largest value over the ranks (True or a signal number if any rank has it), and
        one clock for all. One small all-reduce, after every batch and before every epoch."""
        *flags, self.agreed_elapsed = distributed.all_reduce([*map(float, flags), self.budget.elapsed()], "max",
                                                             "the ranks' agreement after a batch")
        return [int(flag) for flag in flags]

    def rate_at(self, epoch):
        """The learning-rate function of one epoch's batch index."""
        steps, losses = self.batches.steps_per_epoch, [row["valid_loss"] for row in self.history]
        return lambda index: learning_rate(self.config, epoch, (epoch - 1) * steps + index, steps,
                                           self.elapsed(), losses)

    def validate(self, ids=None):
        """Validation loss etc. on the full text, the same numbers on every rank.

        Under DDP rank 0 evaluates the whole text while the others wait for its numbers: the result is exactly
        the single-process one (the default evaluation carries one state through the whole text, which cannot
        be split over ranks). Rank 0 keeps its own thread count: lending it the waiting ranks' cores made
        validation many times slower on a shared 2-core machine (docs/distributed.md).
        """
        failpoint("validation")
        ids = self.valid_ids if ids is None else ids
        if self.world_size == 1:
            return evaluate_ids(self.model, ids, self.vocabulary, self.config.evaluation_batch_size,
                                precision=self.trainer.precision)
        keys = ["tokens", "loss", "perplexity", "accuracy", "top5_accuracy", "seconds"]
        values = [0.0] * len(keys)
        if self.rank == 0:
            result = evaluate_ids(self.model, ids, self.vocabulary, self.config.evaluation_batch_size,
                                  precision=self.trainer.precision)
            values = [result[key] for key in keys]
        result = dict(zip(keys, distributed.broadcast(values, "validation (rank 0 validates, the others wait)")
                          .tolist()))
        result["tokens"] = int(result["tokens"])
        return result

    def end_epoch(self, progress):
        """Validate, append the history row, write the checkpoint files, log the epoch's line."""
        valid = self.validate()
        self.budget.validation_seconds = valid["seconds"]
        is_best = valid["loss"] < min((row["valid_loss"] for row in self.history), default=math.inf)
        row = history_row(progress, valid, self.budget.elapsed())
        self.history.append(row)
        with signals.step():  # a signal during the save waits for it: then state.json names this epoch
            if self.rank == 0:
                self.checkpoints.save_epoch(self.trainer, progress, self.history, HISTORY_FIELDS, is_best,
                                            self.budget.elapsed())
            progress.saved = True  # a stop from here on saves nothing more
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} nats (ppl {row['train_perplexity']:.2f}, "
                 f"acc {row['train_accuracy']:.4f}, {progress.tokens:,} tokens) | valid loss {row['valid_loss']:.4f} "
                 f"nats (ppl {row['valid_perplexity']:.2f}, acc {row['valid_accuracy']:.4f}, {valid['tokens']:,} "
                 f"tokens) | lr {row['learning_rate']:.4g} | {row['tokens_per_second']:,.0f} tok/s | "
                 f"{row['epoch_seconds']:.0f} s"
                 + (f" | skipped {progress.skipped_steps} non-finite steps" if progress.skipped_steps else ""))
        self.last_checkpoint = time.time()
        if self.config.tensorboard and self.rank == 0:
            from lstmlm.training.tensorboard import write_scalars

            write_scalars(self.out / "tensorboard", row)

    def save_resumable(self, progress, reason=None):
        """Save a mid-epoch checkpoint; `reason` is the signal's name (None: the periodic checkpoint).

        Under DDP every rank calls this after the same batch (their agreement) and rank 0 writes the checkpoint
        with every rank's sums and LSTM states, so it resumes on any number of processes that divides the
        batch size, one included.
        """
        progress = progress.combined()
        if self.rank == 0:
            path = self.checkpoints.save_resumable(self.trainer, progress, self.history, self.budget.elapsed())
        self.last_checkpoint = time.time()
        if self.rank != 0:
            return
        where = f"epoch {progress.epoch} after {progress.batches_done} batches"
        if reason is None:
            self.log(f"checkpoint: {where} (every {self.config.checkpoint_minutes:g} min): {path}")
        else:
            self.log(f"{reason} in {where}: saved {path}; {self.resume_hint()}")

    def resume_hint(self):
        """What a stopped run prints last: the command that continues it."""
        return f"continue with: lstmlm train --resume {self.out}"

    def checkpoint_due(self):
        minutes = self.config.checkpoint_minutes
        return minutes > 0 and time.time() - self.last_checkpoint >= 60 * minutes


def open_run(config, out, resume, command):
    """Check everything, then create (or reopen) the run directory; returns a TrainingRun (without its log).

    Under DDP every rank reads and checks the same inputs and rank 0 alone writes; the ranks then agree that all
    of them started, before any other collective, so an error on one rank (say rank 0 finds a run already in
    --out) stops every rank with an error line instead of leaving the others waiting.
    """
    if not torch_backend.is_torch():
        raise LstmlmError(f"training needs the torch backend (KERAS_BACKEND is {keras.backend.backend()!r}); "
                          "evaluate, predict and generate work on any backend")
    failure, parts = None, None
    try:
        parts = _prepare_run(config, out, resume, command)
    except LstmlmError as error:
        failure = error
    if distributed.any_rank(failure is not None, "starting the run"):
        raise failure or LstmlmError(f"rank {distributed.rank()}: stopping: another rank could not start the run "
                                     "(its error line says why)")
    return TrainingRun(*parts, log=None)


def _prepare_run(config, out, resume, command):
    import torch

    main, world_size = distributed.is_main(), distributed.world_size()
    state, resumed = None, None
    if resume is not None:
        out, info, config, state, saved_model = _read_resume(resume, config, command)
        resumed = info["resumed"]
    else:
        config.validate()
    threads = distributed.threads_per_rank(config.threads) if world_size > 1 else config.threads
    if threads > 0:
        torch.set_num_threads(threads)
    precision = _check_precision(config.precision)
    corpus = load_corpus(config)  # reads and checks every input before anything is written
    # a split too short for one batch (or a batch size the ranks cannot share) is an error before anything is written
    Batches(config, corpus["train"], distributed.rank(), world_size)
    if config.softmax == "adaptive":  # so is a cutoff beyond the vocabulary
        resolve_cutoffs(config.cutoffs, len(corpus.vocabulary))
    if state is None:
        out = _new_run_directory(out, fresh=resumed is None) if main else Path(out)
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, len(corpus.vocabulary))
        info = {"config": config.to_dict(), "command": command, "precision": precision,
                "device": torch_backend.device_type(), "versions": versions(),
                "parameters": int(model.count_params()), "corpus": corpus.sources,
                "tokens": {split: int(len(ids)) for split, ids in corpus.splits.items()},
                "vocabulary_size": len(corpus.vocabulary), **({"cutoffs": model.cutoffs} if model.cutoffs else {})}
        if resumed is not None:
            info["resumed"] = resumed
        if main:
            corpus.vocabulary.save(out / rd.VOCABULARY)
    else:
        model = saved_model
    info.pop("distributed", None)  # the layout of this session (a resumed run records its latest session's)
    if world_size > 1:
        info["distributed"] = {"processes": world_size, "backend": distributed.backend(),
                               "threads_per_process": torch.get_num_threads(),
                               "streams_per_process": config.batch_size // world_size}
    if main:
        rd.write_json(out / rd.CONFIG, info, "run config")
    return config, out, info, state, corpus, model, precision


def _read_resume(resume, config, command):
    out = rd.check_run_directory(resume, need_model=False)
    info = rd.read_json(out / rd.CONFIG)
    saved_config = Config.from_dict(info["config"], source=str(out / rd.CONFIG))
    info["config"] = saved_config.to_dict()  # an older run's deprecated keys are written with today's names
    if config is not None and config.epochs > saved_config.epochs:  # resume may extend the run
        saved_config.epochs = config.epochs
        info["config"]["epochs"] = config.epochs
    info.setdefault("resumed", []).append(command)
    saved = rd.read_state(out)  # checks state.json and loads every file it names, or one line on what is wrong
    if saved is None:  # killed before its first checkpoint: start over from its own config
        # Before its first state.json a run can hold at most epoch 1's files; more means state.json was lost,
        # and starting over would overwrite finished epochs.
        epochs = len(rd.read_history(out / rd.HISTORY))
        if epochs > 1 or (out / Checkpoints.epoch_file(2)).exists():
            raise LstmlmError(f"--resume {out}: no state.json, nothing to resume ({epochs} epochs in "
                              f"{rd.HISTORY}: state.json was deleted or damaged)")
        return out, info, saved_config, None, None
    return out, info, saved_config, saved.values, saved.model


def _check_precision(precision):
    precision = torch_backend.resolve_precision(precision)
    if precision == "bfloat16" and not torch_backend.bfloat16_supported():
        raise LstmlmError("--precision bfloat16: this machine has no native bfloat16 (needs a CUDA GPU with bf16 "
                          "or a CPU with avx512_bf16/AMX); use --precision float32 or auto")
    return precision


def _new_run_directory(out, fresh=True):
    """The run directory, created; `fresh=False` reuses one whose run died before its first checkpoint."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"--out {out}: exists and is not a directory")
    if fresh and (out / rd.CONFIG).exists():
        raise LstmlmError(f"--out {out}: already holds a run (use --resume {out} or another --out)")
    (out / rd.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return out


def _log_to_stderr(line):
    print(line, file=sys.stderr, flush=True)


def _silent(line):
    """The log of every rank but 0."""


# ---- the epoch loop --------------------------------------------------------------------------------------
def train(config, out="runs/latest", resume=None, log=None, command=None, progress=None):
    """Train a model and write its run directory; returns the run directory's Path.

    Args:
        config: a Config (with `resume`, only its `epochs` is used, to extend the run).
        out: the new run directory.
        resume: an existing run directory to continue (after Ctrl-C, or to add epochs).
        log: a function taking one line of text (default: print to stderr).
        command: the command line to record (default: sys.argv).
        progress: True for a progress bar, False for plain lines, None = bar only on a terminal.

    Example:
        >>> train(preset("tiny", train="train.txt", valid="valid.txt"), out="runs/tiny")  # doctest: +SKIP
        PosixPath('runs/tiny')
    """
    command = " ".join(shlex.quote(a) for a in (command or sys.argv))
    created = distributed.init()  # under torchrun: join the other ranks (a no-op in one process)
    try:
        if distributed.world_size() == 1:
            return _train(config, out, resume, log, command, progress)
        with distributed.lost_ranks("training"):
            return _train(config, out, resume, log, command, progress)
    finally:
        if created:
            distributed.destroy()


def _train(config, out, resume, log, command, progress):
    run = open_run(config, out, resume, command)
    run.log = log = (log or _log_to_stderr) if run.rank == 0 else _silent
    layout = ""
    if run.world_size > 1:
        layout = (f", {run.world_size} processes x {run.batches.local_batch_size} streams ({distributed.backend()}, "
                  f"threads per process: {run.info['distributed']['threads_per_process']})")
    log(f"run {run.out}: {run.info['parameters']:,} parameters, vocabulary {len(run.vocabulary):,}, train "
        f"{len(run.batches.ids):,} / valid {len(run.valid_ids):,} tokens, {run.batches.steps_per_epoch:,} batches "
        f"per epoch, {run.trainer.precision} on {run.trainer.device}{layout}")
    run.budget.estimate_validation(lambda tokens: run.validate(run.valid_ids[:tokens]), len(run.valid_ids))
    # Under DDP a signal is held until the ranks' next agreement, so that all of them stop after the same batch.
    with signals.handled(hold=run.world_size > 1):
        _epoch_loop(run, progress)
    distributed.barrier("finishing")  # every rank returns once rank 0 has written the last files
    return run.out


def _epoch_loop(run, progress):
    """pytorch/examples' loop: train an epoch, validate, save; on a stop signal, a resumable checkpoint."""
    config, current, bar = run.config, None, None  # current: the epoch in progress (None between epochs)
    try:
        for epoch in range(run.epochs_done + 1, config.epochs + 1):
            spent = run.budget.spent()
            if run.world_size > 1:  # a signal held during the last validation stops every rank here
                held, spent = run.agree(signals.pending() or 0, spent)
                if held:
                    raise signals.Interrupted(held)
            if spent:
                run.log(f"stopping before epoch {epoch}: the --max-minutes {config.max_minutes:g} budget is spent")
                break
            current = run.start_epoch(epoch)
            bar = Progress(run.batches.steps_per_epoch, f"epoch {epoch}/{config.epochs}",
                           enabled=progress if run.rank == 0 else False, log=run.log)
            train_epoch(run.trainer, run.batches.epoch(current.window_position), current, run.rate_at(epoch),
                        should_stop=lambda p: _after_batch(run, p, bar))
            bar.close()
            current.window_position_after = run.batches.position
            current.combine_ranks()
            run.end_epoch(current)
            current = None
    except KeyboardInterrupt as interrupt:
        # A resumable checkpoint of the epoch in progress; every earlier file stays as it was. Not after a
        # second signal that cut a step in half (the weights and the progress would disagree).
        if bar is not None:
            bar.close()
        clean = getattr(interrupt, "clean", True)
        name = "interrupted"  # Ctrl-C, or a KeyboardInterrupt raised by a caller
        if isinstance(interrupt, signals.Interrupted) and interrupt.signal_number != signal.SIGINT:
            name = f"stopped by {interrupt.args[0]}"
        if current is not None and current.batches_done > 0 and not current.saved and clean:
            run.save_resumable(current, reason=name)
        elif not clean:
            run.log(f"{name} (a second signal, mid-step): nothing saved; the last checkpoint stands; "
                    f"{run.resume_hint()}")
        elif (run.out / rd.STATE).exists():  # between epochs, or just after a checkpoint: nothing new to save
            run.log(f"{name}: nothing new since the last checkpoint, which stands; {run.resume_hint()}")
        raise


def _after_batch(run, progress, bar):
    """The progress line, the periodic checkpoint, and the time budget's check; True ends the epoch."""
    if bar.due(progress.batches_done):  # rank 0's own streams; the ranks take equal steps in lockstep
        bar.update(progress.batches_done, f"loss {progress.mean_loss():.3f} ppl {perplexity(progress.mean_loss()):.1f} "
                   f"lr {progress.learning_rate:.3g} {progress.tokens_per_second() * run.world_size:,.0f} tok/s")
    if run.world_size > 1:
        return _after_batch_agreed(run, progress)
    if run.checkpoint_due():
        run.save_resumable(progress)
    if not run.budget.leaves_time_for_validation():
        run.log(f"epoch {progress.epoch}: the time budget ends after {progress.batches_done}/"
                f"{run.batches.steps_per_epoch} batches")
        return True
    return False


def _after_batch_agreed(run, progress):
    """Data parallel: one agreement after every batch, so that every rank takes the same decisions after the same
    batch: a signal held on any rank stops all of them (each gives its share of the checkpoint), a periodic
    checkpoint due on one is written by all, the time budget ends the epoch for all. (The budget is read before
    a periodic checkpoint is written, not after: one agreement per batch.)"""
    held, due, budget_ends = run.agree(signals.pending() or 0, run.checkpoint_due(),
                                       not run.budget.leaves_time_for_validation())
    if held:
        raise signals.Interrupted(held)  # on every rank, after this same batch: _epoch_loop saves
    if due:
        run.save_resumable(progress)
    if budget_ends:
        run.log(f"epoch {progress.epoch}: the time budget ends after {progress.batches_done}/"
                f"{run.batches.steps_per_epoch} batches")
        return True
    return False
