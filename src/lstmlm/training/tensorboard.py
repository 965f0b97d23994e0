"""TensorBoard logs of the training history: one scalar per numeric history field, step = epoch.

Training calls `write_scalars(RUN_DIR / "tensorboard", row)` after every epoch when the config says
`tensorboard: true`; view with `tensorboard --logdir RUN_DIR/tensorboard`. The writer is
`torch.utils.tensorboard.SummaryWriter` (torch is already a dependency); it needs the `tensorboard` package,
the only extra: `pip install lstmlm[tensorboard]`.
"""

from pathlib import Path

from lstmlm.errors import LstmlmError

_writers = {}  # log_dir -> SummaryWriter: one event file per training process, appended every epoch


def _writer(log_dir):
    key = str(Path(log_dir).resolve())
    if key not in _writers:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LstmlmError("TensorBoard logs need the tensorboard package: pip install 'lstmlm[tensorboard]'"
                              " (or train without --tensorboard)") from None
        _writers[key] = SummaryWriter(log_dir=key)
    return _writers[key]


def write_scalars(log_dir, row):
    """Write every numeric field of one history row as a scalar at step row["epoch"].

    Args:
        log_dir: the TensorBoard log directory (created if missing).
        row: one history row, e.g. {"epoch": 3, "train_loss": 4.61, "valid_perplexity": 121.4, ...}.
    Returns:
        the tags written, in row order (the field names, "epoch" excepted).

    Example:
        >>> write_scalars("runs/tiny/tensorboard", {"epoch": 1, "train_loss": 5.2})   # doctest: +SKIP
        ['train_loss']
    """
    if "epoch" not in row:
        raise LstmlmError("write_scalars: the history row has no 'epoch'")
    writer, step = _writer(log_dir), int(row["epoch"])
    tags = []
    for name, value in row.items():
        # bool is an int subclass but not a curve; strings (a bad CSV cell) are not scalars either
        if name == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        writer.add_scalar(name, float(value), global_step=step)
        tags.append(name)
    writer.flush()  # the epoch is visible in TensorBoard now, not when the process ends
    return tags


def close(log_dir=None):
    """Close the writer of log_dir (all writers if None), e.g. before reading the files back."""
    keys = list(_writers) if log_dir is None else [str(Path(log_dir).resolve())]
    for key in keys:
        writer = _writers.pop(key, None)
        if writer is not None:
            writer.close()
