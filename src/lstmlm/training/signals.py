"""Stop requests during training: Ctrl-C (SIGINT), SIGTERM (what Slurm, Kubernetes and systemd send before
SIGKILL) and SIGHUP (a closed terminal) all end training the same way: the step in progress finishes, a
resumable checkpoint is saved, and the process exits with the conventional status 128 + signal number
(130, 143, 129).

A signal that arrives inside a training step is held until the step ends (`step()`), so the checkpoint never
records weights that one half-applied step has changed; anywhere else (validation, data loading) it takes
effect at once. A second signal while one is held takes effect at once, and then nothing is saved: the last
checkpoint on disk stands.

Data parallel (`handled(hold=True)`): ranks must stop after the same batch, and a signal reaches them at different
moments (or only one of them), so every signal is held, wherever it arrives, and nothing raises it; the training
loop reads `pending()` on every rank at the ranks' agreement after each batch (and before each epoch) and raises
Interrupted on all of them at once. A second signal still takes effect at once, without saving.
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
    hold = False  # data parallel: hold every signal for the ranks' agreement (see the module's docstring)


_state = _State()


def _handle(signal_number, frame):
    if (_state.in_step or _state.hold) and _state.pending is None:
        _state.pending = signal_number  # held until the step ends (or, held for all, the ranks' agreement)
        return
    raise Interrupted(signal_number, clean=not (_state.in_step or _state.hold))


@contextlib.contextmanager
def handled(hold=False):
    """Install the handlers for the block (main thread only; elsewhere signals keep their defaults).

    Args:
        hold: hold every signal until the caller reads `pending()` (data parallel training).

    Example:
        >>> with handled():
        ...     with step():
        ...         pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _handle) for number in HANDLED}
    _state.in_step, _state.pending, _state.hold = False, None, hold
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _state.in_step, _state.pending, _state.hold = False, None, False


@contextlib.contextmanager
def step():
    """A training step: a signal that arrives inside it is raised when it ends."""
    _state.in_step = True
    try:
        yield
    finally:
        _state.in_step = False
    if _state.pending is not None and not _state.hold:
        number, _state.pending = _state.pending, None
        raise Interrupted(number)


def pending():
    """The number of the signal being held, or None (what a data-parallel rank brings to the agreement).

    Example:
        >>> with handled(hold=True):
        ...     pending() is None
        True
    """
    return _state.pending

