"""The coordinator: what N data-parallel processes must agree on, behind one small interface, so that the
training loop reads the same for one process and for N.

    agree(values)          each value's largest over the processes (a signal seen by one stops all; one clock)
    reduce(values)         each value's sum over the processes (the epoch's loss, hits and tokens)
    from_writer(compute)   the writer computes a list of numbers, every process gets them (validation)
    gather_rows(tensors)   every process's rows, in the single-process order (a checkpoint's LSTM states)
    any_rank(flag)         True everywhere if any process says so (one failed to start the run)
    barrier(what)          wait for every process
    forward(model)         the model's training forward call (under DDP: gradients averaged in backward)
    is_writer              the one process that logs and writes files

`Coordinator` is the one-process implementation: every call returns the one-process answer at once.
`DataParallelCoordinator` runs each through torch.distributed (distributed.py), with a timeout and one error
line when a process is lost. `coordinator()` picks the one torchrun's environment describes.

Example:
    >>> local = Coordinator()
    >>> local.agree([0, 1.5]).tolist(), local.reduce([2, 3]).tolist(), local.is_writer
    ([0.0, 1.5], [2.0, 3.0], True)
"""

import numpy as np

from lstmlm.training import distributed


class Coordinator:
    """One process: the answers are this process's own."""

    rank, world_size, is_writer = 0, 1, True

    def threads(self, threads):
        """The CPU threads this process uses: --threads (0 = torch's default)."""
        return threads

    def agree(self, values, what="an agreement"):
        return np.asarray(values, dtype=np.float64)

    def reduce(self, values, what="a sum"):
        return np.asarray(values, dtype=np.float64)

    def from_writer(self, compute, size, what="a result"):
        """compute() -> list of `size` numbers, run on the writer only; every process gets the numbers."""
        return np.asarray(compute(), dtype=np.float64)

    def gather_rows(self, tensors, what="gathering rows"):
        return list(tensors)

    def any_rank(self, flag, what="a decision"):
        return bool(flag)

    def barrier(self, what="a barrier"):
        pass

    def forward(self, model):
        """(token_ids, states, training, targets=None) -> the model's training outputs (see Trainer)."""
        def call(token_ids, states, training, targets=None):
            if targets is None:
                return model.call_with_states(token_ids, states, training=training)
            return model.target_log_probabilities(token_ids, targets, states, training=training)

        return call

    def describe(self, streams):
        """A phrase for the run's first log line ('' in one process); `streams`: this process's batch rows."""
        return ""

    def layout(self, config):
        """config.json's record of the processes ({} in one process)."""
        return {}


class DataParallelCoordinator(Coordinator):
    """N processes under torchrun (torch.distributed: gloo on CPU, NCCL on GPUs); rank 0 writes."""

    def __init__(self):
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_writer = self.rank == 0

    def threads(self, threads):
        return distributed.threads_per_rank(threads)  # the machine's cores shared by its processes

    def agree(self, values, what="the ranks' agreement after a batch"):
        return distributed.all_reduce(list(map(float, values)), "max", what)

    def reduce(self, values, what="summing the epoch"):
        return distributed.all_reduce(list(map(float, values)), "sum", what)

    def from_writer(self, compute, size, what="validation (rank 0 validates, the others wait)"):
        return distributed.broadcast(compute() if self.is_writer else [0.0] * size, what)

    def gather_rows(self, tensors, what="gathering the LSTM states"):
        return distributed.gather_rows(tensors, what)

    def any_rank(self, flag, what="a decision"):
        return distributed.any_rank(flag, what)

    def barrier(self, what="a barrier"):
        distributed.barrier(what)

    def forward(self, model):
        return distributed.data_parallel(model)

    def describe(self, streams):
        import torch

        return (f", {self.world_size} processes x {streams} streams ({distributed.backend()}, threads per process: "
                f"{torch.get_num_threads()})")

    def layout(self, config):
        import torch

        return {"distributed": {"processes": self.world_size, "backend": distributed.backend(),
                                "threads_per_process": torch.get_num_threads(),
                                "streams_per_process": config.batch_size // self.world_size}}


def coordinator():
    """The coordinator for this process: data-parallel under torchrun with more than one rank, else local."""
    return DataParallelCoordinator() if distributed.world_size() > 1 else Coordinator()
