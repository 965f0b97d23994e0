"""Data-parallel training over several processes: torch.distributed (DDP), launched by torchrun.

Launch (both run torch's own launcher, torch.distributed.run):

    torchrun --standalone --nproc-per-node N -m lstmlm train ...
    lstmlm train --processes N ...

torchrun starts N copies of `python -m lstmlm train ...` and sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in each one's environment; `init` joins them into one process
group from those variables. Backend: NCCL where torch sees a GPU (rank r of a node uses GPU LOCAL_RANK), gloo on
CPU.

Threads (the trap): torchrun sets OMP_NUM_THREADS=1 in every process it starts unless the variable is already
set, so N processes on a machine of C cores leave C - N cores idle. Each rank therefore sets its own thread count
to C // LOCAL_WORLD_SIZE, or to --threads where that is given, whatever OMP_NUM_THREADS says.

Stopping: Ctrl-C reaches torch's launcher, which passes the signal on to every rank and kills them
--shutdown-timeout seconds later (torchrun: 30; `--processes`: SHUTDOWN_SECONDS); the ranks stop together after
their next agreement (training.py) and rank 0 saves one resumable checkpoint.

Failures: every collective has a timeout (init_process_group(timeout=...); default 30 minutes, or the
LSTMLM_DISTRIBUTED_TIMEOUT environment variable in seconds): a rank that dies or hangs makes the others stop
with one error line instead of waiting forever. It must exceed the longest time one rank waits for the others:
an epoch's validation, which rank 0 runs alone (see training.py). Under torchrun the launcher also stops the other
ranks as soon as one exits with an error.

In one process (no WORLD_SIZE in the environment, or WORLD_SIZE=1) every function here is a no-op that returns
the single-process answer, so the training loop has one code path.
"""

import contextlib
import datetime
import os

import numpy as np

from lstmlm.errors import LstmlmError

TIMEOUT_VARIABLE = "LSTMLM_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 30 * 60
# How long `--processes` lets the ranks finish after Ctrl-C before torch's launcher kills them (torchrun's
# default, 30 s, can be shorter than a step plus a checkpoint of a large model, or a validation in progress).
SHUTDOWN_SECONDS = 300


# ---- who am I ----------------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def launched():
    """True in a process started by torchrun (or any env:// launcher) for a group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank():
    """This process's rank (0 in one process); still right after the group is destroyed."""
    dist = _dist()
    return dist.get_rank() if dist else int(os.environ.get("RANK", "0"))


def world_size():
    dist = _dist()
    return dist.get_world_size() if dist else 1


def is_main():
    """True on the rank that writes files and prints (rank 0)."""
    return rank() == 0


def local_world_size():
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 in one process)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def available_cores():
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_rank(threads=0):
    """CPU threads for each rank: `threads` if given (> 0), else this machine's cores shared by its ranks.

    Example:
        >>> threads_per_rank(3)
        3
    """
    return threads if threads > 0 else max(1, available_cores() // local_world_size())


def backend():
    """'nccl' where torch sees a GPU, else 'gloo'."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def timeout_seconds():
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise LstmlmError(f"{TIMEOUT_VARIABLE}={value!r}: expected a positive number of seconds")
    return seconds


# ---- the process group -------------------------------------------------------------------------------------
def init():
    """Join the process group torchrun described in the environment; True if this call created it.

    A no-op returning False in one process or when the group exists already (a script that set it up itself).
    """
    if not launched() or _dist() is not None:
        return False
    import torch
    import torch.distributed as dist

    seconds = timeout_seconds()
    if torch.cuda.is_available():  # before any tensor is made: "cuda" then means this rank's GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend(), timeout=datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as error:
        raise LstmlmError(f"rank {rank()}: cannot join the process group ({_first_line(error)})") from None
    return True


def destroy():
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


@contextlib.contextmanager
def lost_ranks(what):
    """Turn a failed collective (a rank died, hung past the timeout, or the network failed) into one error line.
    In one process there is no collective: errors pass through as they are."""
    if world_size() == 1:
        yield
        return
    try:
        yield
    except RuntimeError as error:  # torch.distributed.DistError, or the plain RuntimeError of DDP's backward
        if not _is_communication_error(error):
            raise
        raise LstmlmError(f"rank {rank()}: lost contact with the other ranks during {what} "
                          f"({_first_line(error)}); another rank died, was stopped or hung for longer than the "
                          f"{timeout_seconds():g} s timeout ({TIMEOUT_VARIABLE}): its own output says why") from None


# What gloo and NCCL say when a peer is gone (DDP's reducer raises these as plain RuntimeErrors).
_COMMUNICATION_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "broken pipe",
                          "socket", "peer")


def _is_communication_error(error):
    import torch.distributed as dist

    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(marker in text for marker in _COMMUNICATION_MARKERS)


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _device():
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def all_reduce(values, op="sum", what="a reduction"):
    """Element-wise sum (or "max") of a list of numbers over every rank, as a float64 numpy array.

    Example:
        >>> all_reduce([1.5, 2]).tolist()   # one process: the values themselves
        [1.5, 2.0]
    """
    values = np.asarray(values, dtype=np.float64)
    dist = _dist()
    if dist is None:
        return values
    import torch

    tensor = torch.as_tensor(values, device=_device())
    with lost_ranks(what):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.cpu().numpy()


def any_rank(flag, what="a decision"):
    """True on every rank if `flag` is True on any rank."""
    return bool(all_reduce([float(bool(flag))], "max", what)[0])


def broadcast(values, what="a broadcast"):
    """Rank 0's list of numbers, on every rank (float64 numpy)."""
    values = np.asarray(values, dtype=np.float64)
    dist = _dist()
    if dist is None:
        return values
    import torch

    tensor = torch.as_tensor(values, device=_device())
    with lost_ranks(what):
        dist.broadcast(tensor, src=0)
    return tensor.cpu().numpy()


def gather_rows(tensors, what="gathering the LSTM states"):
    """Every rank's (rows, ...) tensors stacked in rank order along rows: rank 0's rows first.

    Ranks hold contiguous blocks of the single-process rows, so the result is the single-process tensor.
    Every rank must call it with tensors of the same shapes; every rank gets the result.
    """
    dist = _dist()
    if dist is None:
        return list(tensors)
    import torch

    gathered = []
    with lost_ranks(what):
        for tensor in tensors:
            tensor = tensor.detach().contiguous()
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor)
            gathered.append(torch.cat(parts, dim=0))
    return gathered


def barrier(what="a barrier"):
    dist = _dist()
    if dist is not None:
        with lost_ranks(what):
            dist.barrier()


# ---- gradients -----------------------------------------------------------------------------------------------
def data_parallel(model):
    """`model.call_with_states` under torch's DistributedDataParallel (gradients averaged over the ranks).

    DDP wraps a torch.nn.Module and calls its forward. A Keras model on the torch backend is an nn.Module, but
    its forward is Keras' `call` (logits only) and its parameters include the dropout seed generators' state
    (uint32, not trained), so DDP gets a thin module whose parameters are exactly the trainable weights (the same
    tensors: nothing is copied) and whose forward is call_with_states. DDP broadcasts rank 0's weights on
    construction and all-reduces each gradient bucket during backward, so after `loss.backward()` every rank
    holds the mean gradient over the ranks.

    Returns:
        a callable (token_ids, states, training) -> (logits, states); with `targets=` (the adaptive softmax)
        -> (log p(target), top-1 hits, states).
    """
    import torch

    class KerasForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "keras_model", model)  # not a submodule: DDP must not see the seed states
            self.weights = torch.nn.ParameterList([v.value for v in model.trainable_variables])

        def forward(self, token_ids, states, training, targets=None):
            if targets is None:
                return self.keras_model.call_with_states(token_ids, states, training=training)
            # the adaptive softmax's training path: (log p(target), hits, states)
            return self.keras_model.target_log_probabilities(token_ids, targets, states, training=training)

    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    # The adaptive softmax leaves a cluster's weights out of a step where no target falls in it: DDP must look
    # for unused parameters then (it costs a graph traversal per step, so only there).
    unused = getattr(model, "softmax", "full") == "adaptive"
    with lost_ranks("broadcasting rank 0's weights"):
        return torch.nn.parallel.DistributedDataParallel(KerasForward(), device_ids=device_ids,
                                                         find_unused_parameters=unused)


# ---- launching -------------------------------------------------------------------------------------------------
def launch(processes, arguments, log=print):
    """Run `python -m lstmlm ARGUMENTS` in `processes` processes on this machine through torch's own launcher
    (torch.distributed.run, the code behind torchrun --standalone); returns the exit status.

    Args:
        processes: how many ranks.
        arguments: the lstmlm command line after `lstmlm` (without --processes).
        log: prints the one-line reason when a rank fails.
    """
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun would set OMP_NUM_THREADS=1 (and warn); each rank sets its own thread count (threads_per_rank).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // processes)))
    command = ["--standalone", f"--nproc-per-node={processes}", f"--shutdown-timeout={SHUTDOWN_SECONDS}", "-m",
               "lstmlm", *arguments]
    try:
        run.main(command)
    except ChildFailedError as error:
        failed_rank, failure = error.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: killed by signal N
        log(f"lstmlm: rank {failed_rank} exited with status {code} (its output above says why)")
        return code
    except SignalException as error:
        log(f"lstmlm: stopped by {error.sigval.name}")
        return 128 + int(error.sigval)
    return 0
