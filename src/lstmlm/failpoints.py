"""Fail points: named places in the training loop where a fault-injection test can signal the process.

`LSTMLM_FAILPOINT=NAME:N` sends SIGKILL to this process at the N-th arrival at `failpoint(NAME)`, exactly
there (the way FreeBSD's fail(9) and TiKV's fail-rs place faults); `NAME:N:SIGTERM` (or SIGINT, SIGHUP) sends
that signal instead, to test the graceful path at a known moment. Unset, `failpoint()` is one comparison.
benchmarks/faults.py and tests/test_reliability.py use it to kill `lstmlm train` during a step, inside a
checkpoint write (after the temporary file is written, before the rename), during validation, and between
writing a checkpoint and writing the state.json that names it.

Names: step, write, validation, before_state.
"""

import os
import signal

_name, _count, _signal = (os.environ.get("LSTMLM_FAILPOINT", "").split(":") + ["", "", ""])[:3]
_remaining = int(_count) if _count.isdigit() else 0


def failpoint(name):
    """Signal this process if the armed fail point is `name` and its count is reached."""
    global _remaining
    if _remaining and name == _name:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), getattr(signal, _signal or "SIGKILL"))
