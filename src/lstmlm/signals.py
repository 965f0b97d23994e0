"""Stop requests during training: Ctrl-C (SIGINT), SIGTERM (what Slurm, Kubernetes and systemd send before
SIGKILL) and SIGHUP (a closed terminal) all end training the same way: the step in progress finishes, a
resumable checkpoint is saved, and the process exits with the conventional status 128 + signal number
(130, 143, 129).

A signal that arrives inside a training step is held until the step ends (`step()`), so the checkpoint never
records weights that one half-applied step has changed; anywhere else (validation, data loading) it takes
effect at once. A second signal while one is held takes effect at once, and then nothing is saved: the last
checkpoint on disk stands.
"""

import contextlib
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """Training was asked to stop by a signal.

    Args:
        signal_number: the signal (SIGINT, SIGTERM, SIGHUP).
        clean: True when it took effect between steps (the model and progress agree, so saving is safe).
    """

    def __init__(self, signal_number=signal.SIGINT, clean=True):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number, self.clean = signal_number, clean

    @property
    def exit_status(self):
        return 128 + self.signal_number


class _State:
    in_step = False
    pending = None


_state = _State()


def _handle(signal_number, frame):
    if _state.in_step and _state.pending is None:
        _state.pending = signal_number  # held until the step ends
        return
    raise Interrupted(signal_number, clean=not _state.in_step)


@contextlib.contextmanager
def handled():
    """Install the handlers for the block (main thread only; elsewhere signals keep their defaults).

    Example:
        >>> with handled():
        ...     with step():
        ...         pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _handle) for number in HANDLED}
    _state.in_step, _state.pending = False, None
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _state.in_step, _state.pending = False, None


@contextlib.contextmanager
def step():
    """A training step: a signal that arrives inside it is raised when it ends."""
    _state.in_step = True
    try:
        yield
    finally:
        _state.in_step = False
    if _state.pending is not None:
        number, _state.pending = _state.pending, None
        raise Interrupted(number)

