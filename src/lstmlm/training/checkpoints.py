"""The files training writes into a run directory (their layout: run_directory.py), and the one rule that
keeps them consistent.

Every file is written atomically (lstmlm.files), and state.json is written last, after every file it names: a
crash at any moment leaves state.json naming a complete, consistent set. No write replaces a file the current
state.json names (mid-epoch checkpoints alternate between two names), and the files of the previous set are
deleted only after the new state.json is in place.
"""

from pathlib import Path

from lstmlm import run_directory as rd
from lstmlm.failpoints import failpoint

INTERRUPTED = "interrupted"


class Checkpoints:
    """Writes checkpoints, history and state.json for one run directory.

    Args:
        run_dir: the run directory (its checkpoints/ folder exists).
        keep: keep only the newest `keep` epoch checkpoints (0 = all).
        writer: False in every process of a data-parallel run but the one that writes: it writes nothing.

    Example:
        >>> Checkpoints("runs/x").epoch_file(7)
        'checkpoints/model-07.keras'
    """

    def __init__(self, run_dir, keep=0, writer=True):
        self.run_dir = Path(run_dir)
        self.keep, self.writer = keep, writer
        state = self.run_dir / rd.STATE
        self.named = rd.read_json(state)["checkpoint"] if state.exists() else None  # what state.json names

    @staticmethod
    def epoch_file(epoch):
        return rd.epoch_model_file(epoch)

    def save_epoch(self, trainer, epoch, history, fields, is_best, wall_seconds):
        """After an epoch's validation: its checkpoint, model.keras if best, history.csv, then state.json."""
        if not self.writer:
            return
        checkpoint = self.epoch_file(epoch.number)
        rd.save_model(trainer.model, self.run_dir / checkpoint, "checkpoint")
        if is_best:
            rd.save_model(trainer.model, self.run_dir / rd.MODEL, "best model")
        rd.write_history(self.run_dir / rd.HISTORY, history, fields)
        self._save_state(trainer, checkpoint, epoch.number, 0, epoch.window_position_after, None, None,
                         history, wall_seconds)
        self._prune(epoch.number)

    def save_resumable(self, trainer, epoch, history, wall_seconds):
        """A mid-epoch checkpoint from which --resume continues exactly where `epoch` stands; its path."""
        checkpoint = f"{rd.CHECKPOINTS}/{INTERRUPTED}.keras"
        if checkpoint == self.named:  # never overwrite the checkpoint state.json names: use the other name
            checkpoint = f"{rd.CHECKPOINTS}/{INTERRUPTED}-1.keras"
        if not self.writer:
            return self.run_dir / checkpoint
        rd.save_model(trainer.model, self.run_dir / checkpoint, "resumable checkpoint")
        self._save_state(trainer, checkpoint, epoch.number - 1, epoch.batches_done,
                         epoch.window_position, epoch.sums(), epoch.states, history, wall_seconds)
        return self.run_dir / checkpoint

    def _save_state(self, trainer, checkpoint, epoch, batch, window_position, sums, states, history, wall_seconds):
        # The optimizer and LSTM-state files are named after the checkpoint they belong to, and state.json,
        # written last, names all three: a crash at any point leaves state.json pointing at a consistent set.
        tag = Path(checkpoint).stem.replace("model-", "")
        arrays, groups = trainer.optimizer_state()
        optimizer_file = f"{rd.CHECKPOINTS}/optimizer-{tag}.npz"
        rd.save_arrays(self.run_dir / optimizer_file, arrays, "optimizer state")
        states_file = None
        if states is not None:
            states_file = f"{rd.CHECKPOINTS}/states-{tag}.npz"
            rd.save_arrays(self.run_dir / states_file, trainer.states_to_arrays(states), "LSTM states")
        valid_losses = [row["valid_loss"] for row in history]
        failpoint("before_state")
        rd.write_json(self.run_dir / rd.STATE, {
            "epoch": epoch, "batch": batch, "checkpoint": checkpoint, "optimizer": optimizer_file,
            "states": states_file, "best_valid_loss": min(valid_losses, default=float("inf")),
            "wall_seconds": wall_seconds, "optimizer_groups": groups, "window_position": window_position,
            "partial_sums": sums}, "training state")
        self.named = checkpoint
        keep = {optimizer_file, states_file}
        for old in (self.run_dir / rd.CHECKPOINTS).glob("*.npz"):  # only the set state.json names is needed
            if f"{rd.CHECKPOINTS}/{old.name}" not in keep:
                old.unlink()
        for name in (INTERRUPTED, f"{INTERRUPTED}-1"):  # mid-epoch checkpoints that state.json no longer names
            if f"{rd.CHECKPOINTS}/{name}.keras" != checkpoint:
                (self.run_dir / rd.CHECKPOINTS / f"{name}.keras").unlink(missing_ok=True)

    def _prune(self, epoch):
        if self.keep <= 0:
            return
        for old in range(1, epoch - self.keep + 1):
            (self.run_dir / self.epoch_file(old)).unlink(missing_ok=True)

