"""A training run: `open_run` checks every input and creates (or reopens, for --resume) the run directory;
`TrainingRun` holds the epoch loop's collaborators (Trainer, Batches, Checkpoints, Budget, the coordinator) and
does the per-epoch work around them: validate, record history, save checkpoints.

Every process of a data-parallel run opens the same run the same way; the coordinator's writer alone writes files.
"""

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import lstmlm
from lstmlm import precision as precisions
from lstmlm import run_directory as rd
from lstmlm import torch_backend
from lstmlm.config import Config
from lstmlm.data.batches import Batches
from lstmlm.data.corpus import load_corpus, split_statistics
from lstmlm.errors import LstmlmError
from lstmlm.failpoints import failpoint
from lstmlm.inference.evaluate import evaluate_ids
from lstmlm.machine import cpu_info
from lstmlm.metrics import comparable
from lstmlm.model.adaptive_softmax import resolve_cutoffs
from lstmlm.model.lstm_language_model import build_model
from lstmlm.training import signals
from lstmlm.training.budget import Budget
from lstmlm.training.checkpoints import Checkpoints
from lstmlm.training.epoch import DIVERGENCE_MARGIN, HISTORY_FIELDS, Epoch, divergence_bound, history_row
from lstmlm.training.schedule import learning_rate
from lstmlm.training.trainer import Trainer

VALIDATION_KEYS = ("tokens", "loss", "perplexity", "accuracy", "top5_accuracy", "seconds")


@dataclass(frozen=True)
class OpenedRun:
    """What `open_run` found or made: the run's inputs, checked, and its directory."""

    config: Config
    out: Path
    info: dict  # config.json's values
    corpus: object  # data.corpus.Corpus
    batches: Batches  # this process's batches of the training split
    model: object  # a built LSTMLanguageModel (a new one, or the checkpoint --resume continues)
    precision: str  # 'float32' or 'bfloat16'
    saved: rd.SavedState | None  # --resume: the checked state.json and the files it names


def versions():
    import torch

    return {"lstmlm": lstmlm.__version__, "keras": keras.__version__, "torch": torch.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu": cpu_info()}


# ---- opening -------------------------------------------------------------------------------------------------
def open_run(config, out, resume, command, coordinator, annotations=None):
    """Check everything, then create (or reopen) the run directory; returns an OpenedRun.

    Every process reads and checks the same inputs and the writer alone writes; the processes then agree that all
    of them started, before any other collective, so an error in one (say the writer finds a run already in
    --out) stops every process with an error line instead of leaving the others waiting.
    """
    if not torch_backend.is_torch():
        raise LstmlmError(f"training needs the torch backend (KERAS_BACKEND is {keras.backend.backend()!r}); "
                          "evaluate, predict and generate work on any backend")
    failure, opened = None, None
    try:
        opened = _open(config, out, resume, command, coordinator, annotations)
    except LstmlmError as error:
        failure = error
    if coordinator.any_rank(failure is not None, "starting the run"):
        raise failure or LstmlmError(f"rank {coordinator.rank}: stopping: another rank could not start the run "
                                     "(its error line says why)")
    return opened


def _open(config, out, resume, command, coordinator, annotations=None):
    import torch

    saved, resumed = None, None
    if resume is not None:
        out, info, config, saved = _read_resume(resume, config, command)
        resumed = info["resumed"]
    else:
        config.validate()
    threads = coordinator.threads(config.threads)
    if threads > 0:
        torch.set_num_threads(threads)
    precision = precisions.training_precision(config.precision)
    corpus = load_corpus(config)  # reads and checks every input before anything is written
    # a split too short for one batch (or a batch size the ranks cannot share) is an error before anything is written
    batches = Batches(config, corpus["train"], coordinator.rank, coordinator.world_size)
    if config.softmax == "adaptive":  # so is a cutoff beyond the vocabulary
        resolve_cutoffs(config.cutoffs, len(corpus.vocabulary))
    if saved is None:
        out = _new_run_directory(out, fresh=resumed is None) if coordinator.is_writer else Path(out)
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, len(corpus.vocabulary))
        info = {**_new_info(config, command, precision, model, corpus, resumed), **(annotations or {})}
        if coordinator.is_writer:
            corpus.tokenizer.save(out)  # vocab.txt for words; characters.json, bytes.json or tokenizer.json
    else:
        model = saved.model
    info.pop("distributed", None)  # the layout of this session (a resumed run records its latest session's)
    info.update(coordinator.layout(config))
    if coordinator.is_writer:
        rd.write_json(out / rd.CONFIG, info, "run config")
    return OpenedRun(config, out, info, corpus, batches, model, precision, saved)


def _new_info(config, command, precision, model, corpus, resumed):
    """config.json's values for a new run."""
    info = {"config": config.to_dict(), "command": command, "precision": precision,
            "device": torch_backend.device_type(), "versions": versions(),
            "parameters": int(model.count_params()), "corpus": corpus.sources,
            "tokens": {split: int(len(ids)) for split, ids in corpus.splits.items()},
            "vocabulary_size": len(corpus.vocabulary), "tokenizer": config.tokenizer,
            **({"cutoffs": model.cutoffs} if model.cutoffs else {})}
    if resumed is not None:
        info["resumed"] = resumed
    return info


def _read_resume(resume, config, command):
    """(run directory, config.json's values, the run's Config, the saved state or None) for --resume."""
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
    return out, info, saved_config, saved


def _new_run_directory(out, fresh=True):
    """The run directory, created; `fresh=False` reuses one whose run died before its first checkpoint."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LstmlmError(f"--out {out}: exists and is not a directory")
    if fresh and (out / rd.CONFIG).exists():
        raise LstmlmError(f"--out {out}: already holds a run (use --resume {out} or another --out)")
    (out / rd.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return out


# ---- the run -----------------------------------------------------------------------------------------------
class TrainingRun:
    """The epoch loop's collaborators and its per-epoch work.

    Args:
        opened: what open_run returned.
        coordinator: the processes' coordinator.
        log: a function taking one line (the writer's log; other processes pass a silent one).
    """

    def __init__(self, opened, coordinator, log):
        self.config, self.out, self.info, self.log = opened.config, opened.out, opened.info, log
        self.coordinator = coordinator
        self.vocabulary, self.valid_ids = opened.corpus.vocabulary, opened.corpus["valid"]
        self.tokenizer = opened.config.tokenizer
        # characters and words of the validation text: bits per character and word perplexity (metrics.py)
        self.valid_statistics = split_statistics(opened.config, "valid")
        self.batches = opened.batches
        self.trainer = Trainer(opened.config, opened.model, opened.precision, coordinator)
        self.checkpoints = Checkpoints(opened.out, opened.config.keep_checkpoints, writer=coordinator.is_writer)
        self.budget = Budget(opened.config.max_minutes)
        self.clock = 0.0  # the wall time the processes agreed on last (agree())
        self.last_checkpoint = time.time()
        self.history, self.epochs_done, self.resumed_epoch = [], 0, None
        if opened.saved is not None:
            self._restore(opened.saved)

    def _restore(self, saved):
        """Continue from the checked state --resume read (its files were loaded once, by rd.read_state)."""
        values = saved.values
        self.trainer.load_optimizer_state(saved.optimizer, values["optimizer_groups"])
        self.history = rd.read_history(self.out / rd.HISTORY)[: values["epoch"]]
        self.epochs_done = values["epoch"]
        self.budget.seconds_before = values["wall_seconds"]
        self.batches.epoch(values["window_position"])  # sets the window generator's position
        if values["batch"]:  # stopped mid-epoch: that epoch continues from its saved progress
            self.resumed_epoch = saved

    @property
    def model(self):
        return self.trainer.model

    def start_epoch(self, number):
        """A fresh Epoch, or the saved progress of the epoch an interrupted run was in."""
        saved, device = self.resumed_epoch, self.trainer.device
        if saved is not None and number == saved.values["epoch"] + 1:
            values, states = saved.values, None
            if self.batches.carries_state:
                states = self.trainer.states_from_arrays(saved.states, self.batches.rows)
            sums = values["partial_sums"] if self.coordinator.is_writer else None  # combine() adds the others'
            epoch = Epoch(number, device, values["batch"], sums, states, values["window_position"])
            # the rate of the last batch done: the history row's rate if no batch is left to train
            epoch.learning_rate = self.rate_at(number)(values["batch"] - 1)
            return epoch
        states = self.model.initial_states(self.batches.local_batch_size) if self.batches.carries_state else None
        return Epoch(number, device, states=states, window_position=self.batches.position)

    def agree(self, *flags):
        """Each flag's largest value over the processes (True, or a signal number, if any has it), and one clock
        for all: one small all-reduce after every batch and before every epoch."""
        *flags, self.clock = self.coordinator.agree([*flags, self.budget.elapsed()])
        return [int(flag) for flag in flags]

    def rate_at(self, number):
        """The learning-rate function of one epoch's batch index (the clock: the processes' agreed time)."""
        steps, losses = self.batches.steps_per_epoch, [row["valid_loss"] for row in self.history]
        return lambda index: learning_rate(self.config, number, (number - 1) * steps + index, steps,
                                           self.clock, losses)

    def validate(self, ids=None):
        """Validation loss etc. on the full text, the same numbers in every process.

        The writer evaluates the whole text while the others wait for its numbers: the result is exactly the
        single-process one (the default evaluation carries one state through the whole text, which cannot be
        split over processes). The writer keeps its own thread count: lending it the waiting processes' cores
        made validation many times slower on a shared 2-core machine (docs/distributed.md).
        """
        failpoint("validation")
        ids = self.valid_ids if ids is None else ids

        def evaluate():
            result = evaluate_ids(self.model, ids, self.vocabulary, self.config.evaluation_batch_size,
                                  precision=self.trainer.precision)
            return [result[key] for key in VALIDATION_KEYS]

        result = dict(zip(VALIDATION_KEYS, self.coordinator.from_writer(evaluate, len(VALIDATION_KEYS)).tolist()))
        result["tokens"] = int(result["tokens"])
        if ids is self.valid_ids:
            result.update(comparable(result, *self.valid_statistics, self.tokenizer))
        return result

    def end_epoch(self, epoch):
        """Validate, append the history row, write the checkpoint files, log the epoch's line."""
        valid = self.validate()
        self.budget.validation_seconds = valid["seconds"]
        self.check_divergence(valid["loss"], f"epoch {epoch.number}: validation loss", epoch)
        is_best = valid["loss"] < min((row["valid_loss"] for row in self.history), default=math.inf)
        row = history_row(epoch, valid, self.budget.elapsed())
        self.history.append(row)
        with signals.step():  # a signal during the save waits for it: then state.json names this epoch
            self.checkpoints.save_epoch(self.trainer, epoch, self.history, HISTORY_FIELDS, is_best,
                                        self.budget.elapsed())
            epoch.saved = True  # a stop from here on saves nothing more
        self.log(_epoch_line(row, epoch, valid))
        self.last_checkpoint = time.time()
        if self.config.tensorboard and self.coordinator.is_writer:
            from lstmlm.training.tensorboard import write_scalars

            write_scalars(self.out / "tensorboard", row)

    def check_divergence(self, loss, what, epoch):
        """Stop with one line if `loss` (nats per token) is not finite or worse than guessing uniformly by
        DIVERGENCE_MARGIN nats: such a model is never saved or announced as the best."""
        bound = divergence_bound(len(self.vocabulary))
        if math.isfinite(loss) and loss <= bound:
            return
        how = "not finite" if not math.isfinite(loss) else f"above ln(vocabulary) + {DIVERGENCE_MARGIN:g} = {bound:.2f}"
        raise LstmlmError(f"{what} is {loss:.4g} nats, {how}: the run has diverged; nothing of epoch {epoch.number} "
                          f"was saved and the last checkpoint stands; lower --learning-rate (now "
                          f"{epoch.learning_rate:g}) or set --clip-norm (now {self.config.clip_norm:g})")

    def save_resumable(self, epoch, reason=None):
        """Save a mid-epoch checkpoint; `reason` is the signal's name (None: the periodic checkpoint).

        Every process calls this after the same batch and the writer writes one checkpoint with every process's
        sums and LSTM states, so it resumes on any number of processes that divides the batch size.
        """
        snapshot = epoch.snapshot(self.coordinator)
        path = self.checkpoints.save_resumable(self.trainer, snapshot, self.history, self.budget.elapsed())
        self.last_checkpoint = time.time()
        where = f"epoch {snapshot.number} after {snapshot.batches_done} batches"
        if reason is None:
            self.log(f"checkpoint: {where} (every {self.config.checkpoint_minutes:g} min): {path}")
        else:
            self.log(f"{reason} in {where}: saved {path}; {self.resume_hint()}")

    def best_epoch(self):
        """The epoch of the lowest validation loss so far (model.keras), or None before the first."""
        return min(self.history, key=lambda row: row["valid_loss"])["epoch"] if self.history else None

    def patience_spent(self):
        """Early stopping: True when the last --patience epochs did not improve on the best validation loss."""
        patience = self.config.patience
        return patience > 0 and self.history[-1]["epoch"] - self.best_epoch() >= patience

    def resume_hint(self):
        """What a stopped run prints last: the command that continues it."""
        return f"continue with: lstmlm train --resume {self.out}"

    def checkpoint_due(self):
        minutes = self.config.checkpoint_minutes
        return minutes > 0 and time.time() - self.last_checkpoint >= 60 * minutes


def _epoch_line(row, epoch, valid):
    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} nats (ppl {row['train_perplexity']:.2f}, "
            f"acc {row['train_accuracy']:.4f}, {epoch.tokens:,} tokens) | valid loss {row['valid_loss']:.4f} "
            f"nats (ppl {row['valid_perplexity']:.2f}, acc {row['valid_accuracy']:.4f}, {valid['tokens']:,} "
            f"tokens) | lr {row['learning_rate']:.4g} | {row['tokens_per_second']:,.0f} tok/s | "
            f"{row['epoch_seconds']:.0f} s"
            + (f" | skipped {epoch.skipped_steps} non-finite steps" if epoch.skipped_steps else ""))
