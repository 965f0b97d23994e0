"""The micro-batcher against a fake model: every caller gets its own answer, concurrent calls share batches."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lstmlm.serving.micro_batching import MicroBatcher


class FakeModel:
    """Answers each request from the request alone, and records the batches it was given."""

    def __init__(self, seconds_per_batch=0.0):
        self.batches, self.seconds = [], seconds_per_batch
        self.lock = threading.Lock()

    def __call__(self, requests):
        with self.lock:
            self.batches.append(list(requests))
        time.sleep(self.seconds)
        return [ValueError(f"bad {r}") if r < 0 else r * r for r in requests]


def test_concurrent_calls_are_batched_and_each_gets_its_own_answer():
    model = FakeModel(seconds_per_batch=0.02)
    batcher = MicroBatcher(model, window=0.005, max_batch=8)
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(batcher.submit, range(100)))
    finally:
        batcher.close()
    assert results == [r * r for r in range(100)]
    assert sorted(r for batch in model.batches for r in batch) == list(range(100))  # each request ran once
    assert max(len(batch) for batch in model.batches) == 8  # bounded, and batches did form
    assert len(model.batches) < 50 and batcher.batch_sizes == [len(b) for b in model.batches]


def test_a_lone_call_waits_about_one_window():
    batcher = MicroBatcher(FakeModel(), window=0.002)
    try:
        started = time.perf_counter()
        assert batcher.submit(3) == 9
        assert time.perf_counter() - started < 0.5
        assert batcher.batch_sizes == [1]
    finally:
        batcher.close()


def test_an_error_for_one_request_reaches_only_its_caller():
    model = FakeModel(seconds_per_batch=0.01)
    batcher = MicroBatcher(model, window=0.01)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.submit, r) for r in (1, -2, 3, 4)]
        assert [f.result() for f in futures if f.exception() is None] == [1, 9, 16]
        assert str(futures[1].exception()) == "bad -2"
    finally:
        batcher.close()


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    calls = []

    def run_batch(requests):
        calls.append(requests)
        if len(calls) == 1:
            raise RuntimeError("model broke")
        return requests

    batcher = MicroBatcher(run_batch, window=0.0)
    try:
        with pytest.raises(RuntimeError, match="model broke"):
            batcher.submit("a")
        assert batcher.submit("b") == "b"
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("c")


def test_bad_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda r: r, window=-1)
    with pytest.raises(ValueError):
        MicroBatcher(lambda r: r, max_batch=0)


def test_a_request_that_times_out_waiting_for_the_gate_is_withdrawn_and_never_runs():
    """The server passes its model lock as the gate: while another call holds it, a request whose time bound
    passes gets TimeoutError and is dropped from its batch (the model never computes an answer no one reads)."""
    model, gate = FakeModel(), threading.Lock()
    batcher = MicroBatcher(model, window=0.001, gate=gate)
    try:
        with gate:  # the model is busy (say, a long /v1/generate)
            started = time.perf_counter()
            with pytest.raises(TimeoutError):
                batcher.submit(5, timeout=0.2)
            waited = time.perf_counter() - started
        assert 0.2 <= waited < 5
        assert batcher.submit(6, timeout=5) == 36  # the gate is free again: answered
        assert model.batches == [[6]] and batcher.batch_sizes == [1]  # 5 never ran
    finally:
        batcher.close()


def test_a_request_whose_batch_already_runs_waits_for_it_past_its_timeout():
    model = FakeModel(seconds_per_batch=0.3)
    batcher = MicroBatcher(model, window=0.0)
    try:
        assert batcher.submit(4, timeout=0.05) == 16  # running when its time ran out: its answer still comes
    finally:
        batcher.close()
