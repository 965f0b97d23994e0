"""Training: a Keras model, a PyTorch-backend training loop (the pattern of the Keras guide "Writing a training
loop from scratch in PyTorch"), truncated BPTT with the state carried across batches, per-epoch validation,
checkpoints, history, resume and a clean Ctrl-C.

Why a custom loop rather than model.fit: carrying the LSTM state between batches (and resetting it per epoch)
is a loop concern, and torch's fused optimizers with the fused LSTM kernel run the step at the speed of
hand-written PyTorch. The model, its weights and its files stay plain Keras (and `fit()` works too:
docs/keras.md).

The shape is pytorch/examples' word_language_model: `train_step` runs one batch (trainer.py), `train_epoch` one
epoch (epoch.py), and `train` here is the epoch loop around them; `TrainingRun` (run.py) holds the loop's
collaborators. Data parallelism (torchrun) reads the same: every process runs this loop on its block of each
batch's rows, and after every batch the processes agree, through the coordinator (coordinator.py), on what only
one of them may have seen (a stop signal, a checkpoint due, the time budget, divergence) and on one clock; in one
process the coordinator answers at once.
"""

import shlex
import signal
import sys

from lstmlm.metrics import perplexity
from lstmlm import run_directory as rd
from lstmlm.training import distributed, signals
from lstmlm.training.coordinator import coordinator as make_coordinator
from lstmlm.training.epoch import divergence_bound, train_epoch
from lstmlm.training.progress_bar import ProgressBar
from lstmlm.training.run import TrainingRun, open_run

# How often (in batches) the running training loss is checked for divergence.
DIVERGENCE_CHECK_BATCHES = 100


def train(config, out="runs/latest", resume=None, log=None, command=None, progress=None, annotations=None):
    """Train a model and write its run directory; returns the run directory's Path.

    Args:
        config: a Config (with `resume`, only its `epochs` is used, to extend the run).
        out: the new run directory.
        resume: an existing run directory to continue (after Ctrl-C, or to add epochs).
        log: a function taking one line of text (default: print to stderr).
        command: the command line to record (default: sys.argv).
        progress: True for a progress bar, False for plain lines, None = bar only on a terminal.
        annotations: a dict recorded in a new run's config.json beside the config (e.g. {"auto": ...}).

    Example:
        >>> train(preset("tiny", train="train.txt", valid="valid.txt"), out="runs/tiny")  # doctest: +SKIP
        PosixPath('runs/tiny')
    """
    command = " ".join(shlex.quote(a) for a in (command or sys.argv))
    created = distributed.init()  # under torchrun: join the other processes (a no-op in one process)
    try:
        with distributed.lost_ranks("training"):
            return _train(config, out, resume, log or _log_to_stderr, command, progress, annotations)
    finally:
        if created:
            distributed.destroy()


def _train(config, out, resume, log, command, progress, annotations=None):
    coordinator = make_coordinator()
    opened = open_run(config, out, resume, command, coordinator, annotations)
    run = TrainingRun(opened, coordinator, log if coordinator.is_writer else _silent)
    layout = coordinator.describe(run.batches.local_batch_size)
    run.log(f"run {run.out}: {run.info['parameters']:,} parameters, vocabulary {len(run.vocabulary):,}, train "
            f"{len(run.batches.ids):,} / valid {len(run.valid_ids):,} tokens, {run.batches.steps_per_epoch:,} "
            f"batches per epoch, {run.trainer.precision} on {run.trainer.device}{layout}")
    run.budget.estimate_validation(lambda tokens: run.validate(run.valid_ids[:tokens]), len(run.valid_ids))
    # With N processes a signal is held until their next agreement, so that all of them stop after the same batch.
    with signals.handled(hold=coordinator.world_size > 1):
        _epoch_loop(run, progress if coordinator.is_writer else False)
    coordinator.barrier("finishing")  # every process returns once the writer has written the last files
    return run.out


def _epoch_loop(run, show_bar):
    """pytorch/examples' loop: train an epoch, validate, save; on a stop signal, a resumable checkpoint."""
    config, epoch, bar = run.config, None, None  # epoch: the one in progress (None between epochs)
    try:
        for number in range(run.epochs_done + 1, config.epochs + 1):
            held, spent = run.agree(signals.pending() or 0, run.budget.spent())
            if held:  # a signal held during the last validation (N processes) stops every process here
                raise signals.Interrupted(held)
            if spent:
                run.log(f"stopping before epoch {number}: the --max-minutes {config.max_minutes:g} budget is spent")
                break
            epoch = run.start_epoch(number)
            bar = ProgressBar(run.batches.steps_per_epoch, f"epoch {number}/{config.epochs}", enabled=show_bar,
                              log=run.log)
            train_epoch(run.trainer, run.batches.epoch(epoch.window_position), epoch, run.rate_at(number),
                        should_stop=lambda epoch: _after_batch(run, epoch, bar))
            bar.close()
            epoch.window_position_after = run.batches.position
            epoch.combine(run.coordinator)
            run.end_epoch(epoch)
            epoch = None
            if run.patience_spent():
                run.log(f"stopping after epoch {number}: validation has not improved for --patience "
                        f"{config.patience} epochs; the best model (epoch {run.best_epoch()}) is model.keras")
                break
    except KeyboardInterrupt as interrupt:
        if bar is not None:
            bar.close()
        _on_interrupt(run, epoch, interrupt)
        raise


def _after_batch(run, epoch, bar):
    """The progress line, then one agreement of the processes on what decides the loop: a held signal, a
    periodic checkpoint due, the time budget, divergence. True ends the epoch."""
    if bar.due(epoch.batches_done):  # the writer's own streams; the processes take equal steps in lockstep
        bar.update(epoch.batches_done, f"loss {epoch.mean_loss():.3f} ppl {perplexity(epoch.mean_loss()):.1f} "
                   f"lr {epoch.learning_rate:.3g} {epoch.tokens_per_second() * run.coordinator.world_size:,.0f} "
                   "tok/s")
    checked = epoch.batches_done % DIVERGENCE_CHECK_BATCHES == 0
    held, due, budget_ends, diverged = run.agree(
        signals.pending() or 0, run.checkpoint_due(), not run.budget.leaves_time_for_validation(),
        checked and not epoch.mean_loss() <= divergence_bound(len(run.vocabulary)))
    if held:
        raise signals.Interrupted(held)  # in every process, after this same batch: _epoch_loop saves
    if diverged:
        run.check_divergence(epoch.mean_loss(), f"epoch {epoch.number}, batch {epoch.batches_done}: the mean "
                             f"training loss of the epoch", epoch)
    if due:
        run.save_resumable(epoch)
    if budget_ends:
        run.log(f"epoch {epoch.number}: the time budget ends after {epoch.batches_done}/"
                f"{run.batches.steps_per_epoch} batches")
    return bool(budget_ends)


def _on_interrupt(run, epoch, interrupt):
    """A resumable checkpoint of the epoch in progress; every earlier file stays as it was. Not after a second
    signal that cut a step in half (the weights and the progress would disagree)."""
    clean = getattr(interrupt, "clean", True)
    name = "interrupted"  # Ctrl-C, or a KeyboardInterrupt raised by a caller
    if isinstance(interrupt, signals.Interrupted) and interrupt.signal_number != signal.SIGINT:
        name = f"stopped by {interrupt.args[0]}"
    if epoch is not None and epoch.batches_done > 0 and not epoch.saved and clean:
        run.save_resumable(epoch, reason=name)
    elif not clean:
        run.log(f"{name} (a second signal, mid-step): nothing saved; the last checkpoint stands; {run.resume_hint()}")
    elif (run.out / rd.STATE).exists():  # between epochs, or just after a checkpoint: nothing new to save
        run.log(f"{name}: nothing new since the last checkpoint, which stands; {run.resume_hint()}")


def _log_to_stderr(line):
    print(line, file=sys.stderr, flush=True)


def _silent(line):
    """The log of every process but the writer."""
