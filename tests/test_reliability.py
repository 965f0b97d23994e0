"""Training faults (issue 8): signals, SIGKILL at fail points, full disks, non-finite steps.

Each fault is made for real where it can be: real signals to a real `lstmlm train` subprocess, SIGKILL at the
fail points of lstmlm.failpoints, a small tmpfs that fills up (root only; otherwise an injected ENOSPC). After
each, every file on disk must load and `--resume` must finish with the unbroken run's history and weights.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_config, tree_digest, write_corpus

from lstmlm import run_directory as rd
from lstmlm.config import Config
from lstmlm.errors import LstmlmError
from lstmlm.training.epoch import HISTORY_FIELDS
from lstmlm.training.loop import train

TIMING = {"tokens_per_second", "epoch_seconds", "wall_seconds"}
LSTMLM = str(Path(sys.executable).with_name("lstmlm"))


@pytest.fixture(scope="module")
def longer_corpus(tmp_path_factory):
    """A toy corpus with 40 batches per epoch (8 streams x 8 steps), so faults can land mid-epoch."""
    return write_corpus(tmp_path_factory.mktemp("longer"), train_sentences=400, other_sentences=40)


def fault_config(corpus, **overrides):
    # One thread: a subprocess with torch's default thread count crawls on a loaded 2-core machine.
    return tiny_config(corpus, **{"epochs": 2, "checkpoint_minutes": 0.0, "threads": 1, **overrides})


def config_file(config, directory):
    path = Path(directory) / "fault-config.json"
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    return path


def start_training(config, out, failpoint=None, **popen):
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if failpoint:
        environment["LSTMLM_FAILPOINT"] = failpoint
    command = [LSTMLM, "train", "--config", str(config_file(config, Path(out).parent)), "--out", str(out),
               "--no-report"]
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            **popen)


@pytest.fixture(scope="module")
def unbroken(longer_corpus, tmp_path_factory):
    """The reference: the same config trained without faults."""
    out = tmp_path_factory.mktemp("unbroken") / "run"
    train(fault_config(longer_corpus), out=out, log=lambda line: None, progress=False)
    return out


def assert_every_file_loads(run_dir):
    for path in sorted(run_dir.rglob("*.keras")):
        rd.load_keras_model(path)
    for path in sorted(run_dir.rglob("*.npz")):
        rd.load_arrays(path)
    if (run_dir / rd.STATE).exists():
        state = rd.read_json(run_dir / rd.STATE)
        for key in ("checkpoint", "optimizer", "states"):
            if state.get(key):
                assert (run_dir / state[key]).is_file(), f"state.json names a missing {state[key]}"


def assert_same_as_unbroken(run_dir, unbroken_dir):
    history, reference = rd.read_history(run_dir / rd.HISTORY), rd.read_history(unbroken_dir / rd.HISTORY)
    assert len(history) == len(reference)
    for row, expected in zip(history, reference):
        for key in HISTORY_FIELDS:
            if key not in TIMING:
                assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-6), key
    for name in ("model.keras", f"checkpoints/model-{len(reference):02d}.keras"):
        ours, theirs = rd.load_keras_model(run_dir / name), rd.load_keras_model(unbroken_dir / name)
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def resume(run_dir):
    train(None, resume=run_dir, log=lambda line: None, progress=False)


# ---- signals -----------------------------------------------------------------------------------------------
def test_sigterm_inside_a_step_saves_a_resumable_checkpoint(longer_corpus, unbroken, tmp_path):
    """A real `lstmlm train` sends itself SIGTERM inside step 52 (epoch 2): the step must finish first."""
    out = tmp_path / "run"
    process = start_training(fault_config(longer_corpus), out, failpoint="step:52:SIGTERM")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "40 batches per epoch" in stderr and "stopped by SIGTERM in epoch 2 after 12 batches" in stderr and f"lstmlm train --resume {out}" in stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("lstmlm: stopped by SIGTERM")
    state = json.loads((out / rd.STATE).read_text())
    assert (state["epoch"], state["batch"], state["checkpoint"]) == (1, 12, "checkpoints/interrupted.keras")
    assert state["states"]  # the LSTM states of the 12th batch, to carry on from
    assert_every_file_loads(out)
    resume(out)
    assert_same_as_unbroken(out, unbroken)


@pytest.mark.parametrize("name", ["SIGHUP", "SIGINT"])
def test_sighup_and_sigint_inside_a_step_wait_for_it(longer_corpus, unbroken, tmp_path, monkeypatch, name):
    """In-process: the signal arrives while train_step runs; the step completes and is counted, then we stop."""
    from lstmlm.training import signals
    from lstmlm.training import epoch as epoch_module
    from lstmlm.training import loop as loop_module

    real_step, calls = epoch_module.train_step, []

    def signalling_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 47:
            os.kill(os.getpid(), getattr(signal, name))  # delivered before the step's work is done
        return real_step(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_step", signalling_step)
    out = tmp_path / "run"
    with pytest.raises(signals.Interrupted) as raised:
        train(fault_config(longer_corpus), out=out, log=lambda line: None, progress=False)
    assert raised.value.exit_status == 128 + getattr(signal, name)
    state = json.loads((out / rd.STATE).read_text())
    assert (state["epoch"], state["batch"]) == (1, 7)  # the 47th step (7th of epoch 2) finished and counted
    monkeypatch.setattr(epoch_module, "train_step", real_step)
    resume(out)
    assert_same_as_unbroken(out, unbroken)


def test_a_signal_between_epochs_keeps_the_epoch_checkpoint_and_says_how_to_resume(longer_corpus, unbroken,
                                                                                  tmp_path, monkeypatch):
    """In-process: SIGTERM lands after epoch 1's checkpoint, before epoch 2's first batch (nothing new to save).
    The resume hint is still printed, the epoch checkpoint stands, and resuming equals the unbroken run."""
    from lstmlm.training import signals
    from lstmlm.training import epoch as epoch_module
    from lstmlm.training import loop as loop_module

    real_epoch, calls = loop_module.train_epoch, []

    def signalled_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise signals.Interrupted(signal.SIGTERM)  # as the handler raises it between steps
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_epoch", signalled_epoch)
    out, lines = tmp_path / "run", []
    with pytest.raises(signals.Interrupted):
        train(fault_config(longer_corpus), out=out, log=lines.append, progress=False)
    assert lines[-1] == (f"stopped by SIGTERM: nothing new since the last checkpoint, which stands; "
                         f"continue with: lstmlm train --resume {out}")
    state = json.loads((out / rd.STATE).read_text())
    assert (state["epoch"], state["batch"]) == (1, 0)
    monkeypatch.setattr(loop_module, "train_epoch", real_epoch)
    resume(out)
    assert_same_as_unbroken(out, unbroken)


def test_sigterm_from_outside_stops_cleanly(longer_corpus, tmp_path):
    """A scheduler's SIGTERM at an arbitrary moment after the first checkpoint."""
    out = tmp_path / "run"
    process = start_training(fault_config(longer_corpus, epochs=12), out)
    deadline = time.time() + 240
    while not (out / rd.STATE).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    if process.returncode == 0:
        pytest.skip("training finished before the signal arrived (machine too fast for this toy)")
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "lstmlm: stopped by SIGTERM" in stderr
    assert_every_file_loads(out)
    state = json.loads((out / rd.STATE).read_text())
    assert state["epoch"] >= 1 and f"continue with: lstmlm train --resume {out}" in stderr


# ---- SIGKILL at fail points ----------------------------------------------------------------------------------
@pytest.mark.parametrize("point", ["step:55", "write:4", "validation:2", "before_state:2"])
def test_sigkill_at_a_fail_point_loses_nothing_finished(longer_corpus, unbroken, tmp_path, point):
    out = tmp_path / "run"
    config = fault_config(longer_corpus, checkpoint_minutes=0.005)  # a mid-epoch checkpoint every 0.3 s
    process = start_training(config, out, failpoint=point)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == -signal.SIGKILL, stderr
    assert_every_file_loads(out)
    resume(out)
    assert_same_as_unbroken(out, unbroken)


def test_killed_before_its_first_checkpoint_resumes_from_scratch(longer_corpus, unbroken, tmp_path):
    out = tmp_path / "run"
    process = start_training(fault_config(longer_corpus), out, failpoint="step:5")
    process.communicate(timeout=240)
    assert process.returncode == -signal.SIGKILL
    assert (out / rd.CONFIG).exists() and not (out / rd.STATE).exists()
    resume(out)
    assert_same_as_unbroken(out, unbroken)


# ---- full disks --------------------------------------------------------------------------------------------
def test_enospc_stops_with_one_line_and_resume_works(longer_corpus, unbroken, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_savez, calls = np.savez, []

    def full_disk(path, **arrays):  # the second optimizer file (end of epoch 2) hits a full disk
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(path, **arrays)

    monkeypatch.setattr(rd.np, "savez", full_disk)
    with pytest.raises(LstmlmError) as raised:
        train(fault_config(longer_corpus), out=out, log=lambda line: None, progress=False)
    message = str(raised.value)
    assert "\n" not in message and "optimizer-02.npz" in message and "No space left on device" in message
    assert "then --resume" in message
    assert not list((out / rd.CHECKPOINTS).glob(".*tmp*")), "the temporary file must be removed"
    monkeypatch.setattr(rd.np, "savez", real_savez)
    assert rd.read_json(out / rd.STATE)["epoch"] == 1  # state.json still names epoch 1's complete set
    assert_every_file_loads(out)
    resume(out)
    assert_same_as_unbroken(out, unbroken)


def _mount_tmpfs(path, size):
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def test_a_real_full_tmpfs(longer_corpus, unbroken, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "160k"):  # room for epoch 1's files (~147 kB), not for epoch 2's
        pytest.skip("needs root and permission to mount a tmpfs (runs in CI as root)")
    try:
        out = disk / "run"
        process = start_training(fault_config(longer_corpus), out)
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 2, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("lstmlm: error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in stderr
        assert_every_file_loads(out)
        copy = tmp_path / "freed"
        shutil.copytree(out, copy)  # "space freed": continue on a disk with room
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    resume(copy)
    assert_same_as_unbroken(copy, unbroken)


# ---- non-finite steps ----------------------------------------------------------------------------------------
def test_diverging_learning_rate_stops_with_one_line_and_keeps_the_checkpoints(toy_corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(toy_corpus, epochs=1, optimizer="sgd", clip_norm=0.0), out=out, log=lambda line: None,
          progress=False)
    before = tree_digest(out)
    info = json.loads((out / rd.CONFIG).read_text())
    info["config"]["learning_rate"] = 3e38  # as if the user had resumed with a learning rate that diverges to inf
    (out / rd.CONFIG).write_text(json.dumps(info))
    with pytest.raises(LstmlmError) as raised:
        train(Config(epochs=2), resume=out, log=lambda line: None, progress=False)
    message = str(raised.value)
    assert message.startswith("epoch 2, batch ") and "10 steps in a row" in message and "--learning-rate" in message
    after = tree_digest(out)
    for name in ("model.keras", "checkpoints/model-01.keras", "state.json", "history.csv", "vocab.txt"):
        assert after[name] == before[name], name


def test_huge_learning_rate_through_the_cli_never_tracebacks(toy_corpus, tmp_path):
    """The issue's report: `--learning-rate 1e6 --optimizer sgd --clip-norm 0` crashed in math.exp."""
    completed = subprocess.run(
        [LSTMLM, "train", "--preset", "tiny", "--train", str(toy_corpus["train"]), "--valid", str(toy_corpus["valid"]),
         "--learning-rate", "1e6", "--optimizer", "sgd", "--clip-norm", "0", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=240)
    assert "Traceback" not in completed.stderr and "OverflowError" not in completed.stderr
    # Issue 19: such a run has diverged (its loss far above uniform's, finite or not): one error line, exit 2,
    # and no best model announced or written
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("lstmlm: error: epoch 1") and ("diverged" in last or "non-finite" in last), last
    assert "best model" not in completed.stdout + completed.stderr
    assert not (tmp_path / "run" / "model.keras").exists()
