"""Micro-batching: calls that arrive within a short window run as one batch in one worker thread.

The server answers /v1/next in a thread pool. With a lock, 32 concurrent requests run 32 times through the model
one after another, each reading every weight once. Here the first request of a batch opens a window (default
1.5 ms); every request that arrives before it closes -- or until `max_batch` are waiting -- is passed to
`run_batch` in one call, which can read each weight once for all of them. Requests that arrive while a batch runs
wait for the next one; a request that has already waited that long does not wait for a window again.

`run_batch(requests) -> results` must answer each request as if it were alone (the server's batch function
makes the answer independent of the batch mates: see LanguageModel.predict_next_batch). An exception raised for
the whole batch goes to every caller of that batch; a result that is an Exception instance is raised in its
own caller only.
"""

import contextlib
import queue
import threading
import time
from concurrent.futures import Future


class MicroBatcher:
    """Run `run_batch` on batches of concurrent `submit` calls, in one worker thread.

    Args:
        run_batch: callable(list of requests) -> list of results, in the same order.
        window: seconds a batch stays open after its first request arrives.
        max_batch: the most requests per batch.
        gate: a context manager (the server's model lock) held around each batch. Its requests are counted as
            running only once it is held, so a request that times out while the batch waits for it is withdrawn.

    Example:
        >>> batcher = MicroBatcher(lambda texts: [t.upper() for t in texts])
        >>> batcher.submit("the cat")
        'THE CAT'
        >>> batcher.close()
    """

    def __init__(self, run_batch, window=0.0015, max_batch=32, gate=None):
        if window < 0 or max_batch < 1:
            raise ValueError("window must be >= 0 and max_batch >= 1")
        self.run_batch, self.window, self.max_batch = run_batch, window, max_batch
        self.gate = gate if gate is not None else contextlib.nullcontext()
        self.batch_sizes = []  # of every batch run so far (for tests and benchmarks)
        self._queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="lstmlm-micro-batcher", daemon=True)
        self._worker.start()

    def submit(self, request, timeout=None):
        """Block until `request` has been answered in some batch; return its result (or raise its error).

        With `timeout` (seconds), a request still waiting for its batch when it runs out is withdrawn (it will
        not run) and TimeoutError is raised; one whose batch already runs is waited for (one batch's time).
        """
        if self._closed:
            raise RuntimeError("the micro-batcher is closed")
        future = Future()
        self._queue.put((time.perf_counter(), request, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.cancel():  # still queued: withdrawn
                raise
            return future.result()  # its batch is running: it ends soon

    def close(self):
        """Finish the queued requests, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join()

    def _collect(self):
        """The next batch: the first waiting request, and those that arrive until its window closes."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = first[0] + self.window
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # closing: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _work(self):
        while True:
            batch = self._collect()
            if batch is None:
                return
            with self.gate:
                self._run(batch)

    def _run(self, batch):
        batch = [item for item in batch if item[2].set_running_or_notify_cancel()]  # drop withdrawn requests
        if not batch:
            return
        futures = [future for _, _, future in batch]
        self.batch_sizes.append(len(batch))
        try:
            results = self.run_batch([request for _, request, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} requests")
        except BaseException as error:  # the whole batch failed: every caller of it hears why
            for future in futures:
                future.set_exception(error)
            return
        for future, result in zip(futures, results):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
