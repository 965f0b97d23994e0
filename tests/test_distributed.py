"""Data-parallel training (torch DDP, gloo on CPU, 2 processes): N ranks x B/N streams == 1 process x B streams.

Each launch starts real processes through torch's launcher (torchrun) or by hand, and has a timeout: a hang fails
the test instead of blocking CI. Start-up (importing torch and Keras in every process) dominates their time, so
one launch runs several training jobs (distributed_worker.py) and several tests read its results.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from lstmlm import cli
from lstmlm.training import distributed
from lstmlm import run_directory as rd
from lstmlm.training import epoch as epoch_module
from lstmlm.config import Config
from lstmlm.training.epoch import HISTORY_FIELDS
from lstmlm.training.loop import train

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT = 300  # seconds: generous for a busy 2-core machine; a hang fails instead of blocking CI
TIMING = {"tokens_per_second", "epoch_seconds", "wall_seconds"}
STEPS_PER_EPOCH = 24  # the toy corpus (1,899 training tokens) in 10 streams x 8 steps
SIGNAL_STEP = STEPS_PER_EPOCH + 5  # SIGTERM during the 5th step of epoch 2: the run stops after it


# ---- launching -----------------------------------------------------------------------------------------------
def _environment(**extra):
    # OMP_NUM_THREADS set: torchrun would otherwise print its banner; each rank sets its own threads anyway
    return {**os.environ, "OMP_NUM_THREADS": "1", distributed.TIMEOUT_VARIABLE: "60", **extra}


def _run(command, timeout=LAUNCH_TIMEOUT, env=None):
    """Run a launcher; on timeout SIGTERM it (torchrun passes that on to its workers), then kill it, and fail."""
    process = subprocess.Popen(command, env=env or _environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"{' '.join(map(str, command))} took over {timeout} s:\n{output[-3000:]}")
    return process.returncode, output


def torchrun(*arguments):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 *map(str, arguments)])


def run_jobs(jobs, directory):
    path = Path(directory) / "jobs.json"
    path.write_text(json.dumps(jobs), encoding="utf-8")
    code, output = torchrun(WORKER, path)
    assert code == 0, output[-3000:]
    return output


def _free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- single-process references ---------------------------------------------------------------------------------
def single_process(config, out, signal_at=None):
    """Train in this process, recording every step's loss; signal_at: SIGTERM to itself during that step."""
    real_step, losses = epoch_module.train_step, []

    def step(*args, **kwargs):
        if len(losses) + 1 == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)  # held until the step ends (signals.py), then the run stops
        loss, hits, states = real_step(*args, **kwargs)
        losses.append(float(loss))
        return loss, hits, states

    epoch_module.train_step = step
    try:
        train(config, out=out, log=lambda line: None, progress=False, command=["test"])
    except KeyboardInterrupt:
        pass
    finally:
        epoch_module.train_step = real_step
    return losses


def rank_losses(prefix):
    """The global loss of every step: the mean of the two ranks' means (each over an equal share of tokens)."""
    per_rank = [json.loads(Path(f"{prefix}.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1])
    return list(np.mean(per_rank, axis=0))


def read_history(out):
    return rd.read_history(Path(out) / rd.HISTORY)


def assert_same_history(a, b):
    assert len(a) == len(b) > 0
    for row_a, row_b in zip(a, b):
        for key in HISTORY_FIELDS:
            if key not in TIMING:  # values are rounded to 5 decimals (perplexity to 3)
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-4, abs=2e-5), key


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = rd.load_keras_model(a).get_weights(), rd.load_keras_model(b).get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def assert_same_arrays(a, b, atol=1e-5, rtol=0.0):
    arrays_a, arrays_b = rd.load_arrays(a), rd.load_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        np.testing.assert_allclose(arrays_a[key], arrays_b[key], rtol=rtol, atol=atol, err_msg=key)


# ---- the shared launch: equivalence and interruption jobs ------------------------------------------------------
def equivalence_configs(toy_corpus):
    """Dropout off, fixed seed, 10 streams; 2 epochs x 24 steps each."""
    return {
        # Zaremba's SGD: the loss summed over time, a norm clip that bites, the rate halved for epoch 2
        "sgd": tiny_config(toy_corpus, batch_size=10, optimizer="sgd", learning_rate=1.0, sum_over_time=True,
                           clip_norm=0.5, learning_rate_schedule="decay", learning_rate_decay=0.5,
                           learning_rate_decay_start=1, init_scale=0.1),
        "adam": tiny_config(toy_corpus, batch_size=10),
        # the tutorial's windows, sharded by rows the same way
        "window": tiny_config(toy_corpus, batch_size=10, batching="window", num_steps=6, skip_step=3),
        # the adaptive softmax: each rank computes only its own targets' clusters (the last, <unk> alone, is
        # never a target: its weights are unused in every step)
        "adaptive": tiny_config(toy_corpus, batch_size=10, softmax="adaptive", cutoffs="4,12,25"),
    }


@pytest.fixture(scope="module")
def two_ranks(toy_corpus, tmp_path_factory):
    """One torchrun launch of 2 ranks: the equivalence runs, a run that SIGTERM stops in epoch 2 (sent to rank 1
    alone: both ranks must stop after the same batch), and the 2-rank resumption of a run stopped in one process."""
    base = tmp_path_factory.mktemp("ddp")
    configs = equivalence_configs(toy_corpus)
    single_interrupted = base / "single-interrupted"
    single_process(configs["adam"], single_interrupted, signal_at=SIGNAL_STEP)
    assert rd.read_json(single_interrupted / rd.STATE)["batch"] == 5
    shutil.copytree(single_interrupted, base / "single-interrupted-resumed-by-2")
    jobs = [{"config": config.to_dict(), "out": str(base / name), "losses": str(base / f"{name}-losses")}
            for name, config in configs.items()]
    jobs.append({"config": configs["adam"].to_dict(), "out": str(base / "ddp-interrupted"),
                 "fault": {"rank": 1, "step": SIGNAL_STEP, "kind": "signal"}})
    jobs.append({"resume": str(base / "single-interrupted-resumed-by-2")})
    # a mid-epoch checkpoint after almost every batch: saving must not change the training
    jobs.append({"config": configs["adam"].replace(checkpoint_minutes=1e-4).to_dict(), "out": str(base / "periodic")})
    # a time budget spent before the first epoch: both ranks stop there
    jobs.append({"config": configs["adam"].replace(max_minutes=1e-9).to_dict(), "out": str(base / "budget")})
    output = run_jobs(jobs, base)
    return {"base": base, "configs": configs, "output": output, "single_interrupted": single_interrupted}


@pytest.mark.parametrize("name", ["sgd", "adam", "window", "adaptive"])
def test_two_ranks_of_5_streams_equal_one_process_of_10(two_ranks, tmp_path, name):
    config, ddp = two_ranks["configs"][name], two_ranks["base"] / name
    losses = single_process(config, tmp_path / "single")
    assert len(losses) == 2 * (STEPS_PER_EPOCH if name != "window" else 1899 // 60)
    # the loss of every step (each rank's mean over its 5 streams, averaged) and the epoch history
    np.testing.assert_allclose(rank_losses(two_ranks["base"] / f"{name}-losses"), losses, rtol=1e-5, atol=1e-6)
    assert_same_history(read_history(ddp), read_history(tmp_path / "single"))
    # the weights after every epoch, and the optimizer state (SGD has none; Adam's moments must match)
    for epoch in (1, 2):
        assert_same_weights(ddp / f"checkpoints/model-0{epoch}.keras", tmp_path / f"single/checkpoints/model-0{epoch}.keras")
    assert_same_arrays(ddp / "checkpoints/optimizer-02.npz", tmp_path / "single/checkpoints/optimizer-02.npz")
    state, single_state = (rd.read_json(d / rd.STATE) for d in (ddp, tmp_path / "single"))
    assert state["window_position"] == single_state["window_position"]
    info = rd.read_json(ddp / rd.CONFIG)
    assert info["distributed"] == {"processes": 2, "backend": "gloo", "threads_per_process": 1,
                                   "streams_per_process": 5}
    assert info["versions"]["threads"] == 1


def test_sigterm_to_one_rank_stops_both_after_the_same_batch_with_every_rank_states(two_ranks):
    ddp, single = two_ranks["base"] / "ddp-interrupted", two_ranks["single_interrupted"]
    output = two_ranks["output"]
    assert output.count("stopped by SIGTERM in epoch 2 after 5 batches") == 1  # rank 0 alone reports
    assert "rank 0: stopped (SIGTERM)" in output and "rank 1: stopped (SIGTERM)" in output
    for out in (ddp, single):
        state = rd.read_json(out / rd.STATE)
        assert (state["epoch"], state["batch"]) == (1, 5)
    ddp_state, single_state = rd.read_json(ddp / rd.STATE), rd.read_json(single / rd.STATE)
    assert ddp_state["partial_sums"]["tokens"] == single_state["partial_sums"]["tokens"] == 5 * 10 * 8
    assert ddp_state["partial_sums"]["loss"] == pytest.approx(single_state["partial_sums"]["loss"], rel=1e-5)
    # 10 rows (rank 0's 5, then rank 1's), equal to the single-process states at the same point
    states = rd.load_arrays(ddp / ddp_state["states"])
    assert states["h0"].shape == (10, 16)
    # (cell states reach |c| ~ 9 here: float32 rounding of the different summation orders is ~1e-5 of that)
    assert_same_arrays(ddp / ddp_state["states"], single / single_state["states"], rtol=1e-5)
    assert_same_weights(ddp / ddp_state["checkpoint"], single / single_state["checkpoint"])
    # exactly one resumable checkpoint, written once (by rank 0), beside epoch 1's
    assert sorted(f"checkpoints/{p.name}" for p in (ddp / "checkpoints").iterdir()) == sorted(
        ["checkpoints/model-01.keras", ddp_state["checkpoint"], ddp_state["optimizer"], ddp_state["states"]])


def test_periodic_checkpoints_and_the_time_budget_under_two_ranks(two_ranks):
    base = two_ranks["base"]
    assert_same_history(read_history(base / "periodic"), read_history(base / "adam"))
    assert_same_weights(base / "periodic/checkpoints/model-02.keras", base / "adam/checkpoints/model-02.keras")
    assert two_ranks["output"].count("checkpoint: epoch 2 after 23 batches") == 1  # written by rank 0 alone
    assert rd.read_json(base / "periodic" / rd.STATE)["checkpoint"] == "checkpoints/model-02.keras"
    assert two_ranks["output"].count("stopping before epoch 1: the --max-minutes") == 1
    assert not (base / "budget" / rd.HISTORY).exists() and (base / "budget" / rd.CONFIG).exists()


def test_resume_across_process_counts(two_ranks, tmp_path):
    """A 2-rank checkpoint resumes in one process, a one-process checkpoint in 2 ranks: both finish exactly like
    the unbroken single-process run."""
    base, config = two_ranks["base"], two_ranks["configs"]["adam"]
    single_process(config, tmp_path / "unbroken")
    shutil.copytree(base / "ddp-interrupted", tmp_path / "ddp-in-one")
    train(None, resume=tmp_path / "ddp-in-one", log=lambda line: None, progress=False)
    for resumed in (tmp_path / "ddp-in-one", base / "single-interrupted-resumed-by-2"):
        assert_same_history(read_history(resumed), read_history(tmp_path / "unbroken"))
        assert_same_weights(resumed / "checkpoints/model-02.keras", tmp_path / "unbroken/checkpoints/model-02.keras")
        assert rd.read_json(resumed / rd.STATE)["checkpoint"] == "checkpoints/model-02.keras"
        assert not list((resumed / "checkpoints").glob("interrupted*"))


def test_ctrl_c_on_lstmlm_train_processes_saves_one_checkpoint_and_resumes(toy_corpus, tmp_path):
    """Ctrl-C (SIGINT) to `lstmlm train --processes 2` while it trains: torch's launcher passes it to both ranks,
    they stop after the same batch, rank 0 saves one resumable checkpoint, every process exits with 130; the run
    then resumes (in one process here) and ends exactly like an unbroken run."""
    config = tiny_config(toy_corpus, batch_size=10, epochs=6)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "train", "--config", str(tmp_path / "config.json"),
                                "--processes", "2", "--out", str(out), "--no-report"], env=_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.time() + LAUNCH_TIMEOUT
    while not any(line.startswith("epoch 1:") for line in lines) and process.poll() is None:
        assert time.time() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert process.returncode == 130, output[-3000:]
    assert "OMP_NUM_THREADS" not in output  # --processes sets the threads itself: no torchrun banner
    assert "Traceback" not in output
    state = rd.read_json(out / rd.STATE)
    assert 1 <= state["epoch"] < 6, "the run ended before the signal: nothing was tested"
    saved = output.count("interrupted in epoch")  # one line from rank 0, or none if it stopped between epochs
    assert saved == (1 if state["batch"] else 0)
    assert len(read_history(out)) == state["epoch"]
    info = rd.read_json(out / rd.CONFIG)
    assert "--processes 2" in info["command"] and info["distributed"]["processes"] == 2
    train(None, resume=out, log=lambda line: None, progress=False)
    single_process(config, tmp_path / "unbroken")
    assert_same_history(read_history(out), read_history(tmp_path / "unbroken"))
    # 144 Adam steps at lr 0.03: rounding differences of the two summation orders grow to ~1e-4 (2 epochs: 1e-5)
    assert_same_weights(out / "model.keras", tmp_path / "unbroken" / "model.keras", atol=5e-4)
    assert "distributed" not in rd.read_json(out / rd.CONFIG)  # the last session ran in one process


# ---- the command line ----------------------------------------------------------------------------------------
def test_torchrun_trains_the_tiny_preset_then_one_process_evaluates_and_predicts(toy_corpus, tmp_path, capsys):
    arguments = ["train", "--preset", "tiny", "--train", toy_corpus["train"], "--valid", toy_corpus["valid"],
                 "--test", toy_corpus["test"], "--epochs", "1", "--precision", "float32"]
    code, output = torchrun("-m", "lstmlm", *arguments, "--out", tmp_path / "ddp")
    assert code == 0, output[-3000:]
    assert output.count("best model:") == 1 and output.count("epoch 1: train loss") == 1  # rank 0 alone prints
    assert "2 processes x 4 streams (gloo, threads per process: 1)" in output
    single = tmp_path / "single"
    assert cli.main([*map(str, arguments), "--out", str(single), "--no-report"]) == 0
    assert_same_history(read_history(tmp_path / "ddp"), read_history(single))
    capsys.readouterr()
    results = {}
    for out in (tmp_path / "ddp", single):
        assert cli.main(["evaluate", str(out), "--split", "valid", "--json"]) == 0
        results[out.name] = json.loads(capsys.readouterr().out)
    assert results["ddp"]["tokens"] == results["single"]["tokens"] == 187
    assert results["ddp"]["loss"] == pytest.approx(results["single"]["loss"], abs=1e-5)
    assert results["ddp"]["loss"] == pytest.approx(read_history(tmp_path / "ddp")[0]["valid_loss"], abs=1e-5)
    from lstmlm.inference.language_model import load

    predictions = [_probabilities(load(out).predict_next("the cat", top_k=5)) for out in (tmp_path / "ddp", single)]
    assert list(predictions[0]) == list(predictions[1]) and len(predictions[0]) == 5
    np.testing.assert_allclose(list(predictions[0].values()), list(predictions[1].values()), atol=1e-5)


def _probabilities(result):
    """{word: probability} from a predict_next result (whatever its list of predictions is called)."""
    entries = next(v for v in result.values() if isinstance(v, list) and v and isinstance(v[0], dict))
    return {entry["word"]: entry["probability"] for entry in entries}


def test_processes_must_divide_the_batch_size(toy_corpus, tmp_path, capsys):
    code = cli.main(["train", "--preset", "tiny", "--train", str(toy_corpus["train"]), "--valid",
                     str(toy_corpus["valid"]), "--batch-size", "9", "--processes", "2", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "--batch-size 9 is not divisible by --processes 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- failures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exit", "hang"])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_an_error(toy_corpus, tmp_path, kind):
    """Two ranks started by hand (no torchrun to clean up): rank 1 dies or hangs in step 3; rank 0 must exit
    with one error line (at once when the peer is gone, after the timeout when it hangs), not wait forever."""
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"config": tiny_config(toy_corpus, batch_size=10, epochs=1).to_dict(),
                                 "out": str(tmp_path / "run"), "fault": {"rank": 1, "step": 3, "kind": kind}}]))
    env = _environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                       **{distributed.TIMEOUT_VARIABLE: "15"})
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(jobs)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        output, _ = ranks[0].communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert ranks[0].returncode == 2, output[-3000:]
    assert "lstmlm: error: rank 0: lost contact with the other ranks during training" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run" / "state.json").exists()  # nothing half-written: no epoch finished


# ---- bfloat16 -------------------------------------------------------------------------------------------------
def _bfloat16_config(paths, **overrides):
    """The `small` preset's recipe (SGD at rate 1 on the loss summed over time, clip 5, weights +-0.1, no dropout)
    at toy size: 2x32 units, 10 streams x 10 steps, one epoch."""
    return tiny_config(paths, hidden_size=32, num_steps=10, batch_size=10, epochs=1, optimizer="sgd",
                       learning_rate=1.0, sum_over_time=True, clip_norm=5.0, init_scale=0.1,
                       learning_rate_schedule="constant", max_vocabulary_size=0, **overrides)


def test_two_ranks_in_bfloat16_end_an_epoch_within_the_one_process_spread(tmp_path, monkeypatch):
    """Issue 19 item 5: 2 ranks in bfloat16 end one epoch of the `small` recipe (at toy size) where one process
    does. The one-process spread: float32 at 1 thread, bfloat16 at 1 and 2 threads; 2 ranks in bfloat16 must lie
    in it widened by TOLERANCE = 0.005 nats, 10x the largest gap measured on this text (seeds 1-3): one process's
    bfloat16 against its float32 differed by at most 0.0005 nats, 2 ranks' bfloat16 from one process's by at most
    0.0005 (a rounding-sized difference: bfloat16 products blocked for 5 rows instead of 10). A diverged run (the
    12.83 against 7.15 of the old docs/distributed.md) or a step that is not one process's step is far outside.
    The bfloat16 capability is forced (here by monkeypatch, in the ranks by LSTMLM_TEST_BFLOAT16=1), so this runs
    on any CPU: torch computes bfloat16 everywhere, only slower."""
    from helpers import zipf_text
    from lstmlm import torch_backend

    tolerance = 0.005
    monkeypatch.setattr(torch_backend, "bfloat16_supported", lambda: True)
    paths = {"train": tmp_path / "train.txt", "valid": tmp_path / "valid.txt", "test": tmp_path / "valid.txt"}
    paths["train"].write_text(zipf_text(1000, 12_000, structure=0.25), encoding="utf-8")
    paths["valid"].write_text(zipf_text(1000, 2_000, structure=0.25, seed=1), encoding="utf-8")
    threads_before, one = torch.get_num_threads(), {}
    try:
        for precision, threads in (("float32", 1), ("bfloat16", 1), ("bfloat16", 2)):
            out = tmp_path / f"one-{precision}-{threads}"
            single_process(_bfloat16_config(paths, precision=precision, threads=threads), out)
            one[precision, threads] = read_history(out)[0]["valid_loss"]
    finally:
        torch.set_num_threads(threads_before)  # --threads set this process's torch threads
    jobs = [{"config": _bfloat16_config(paths, precision=precision, threads=1).to_dict(),
             "out": str(tmp_path / f"two-{precision}")} for precision in ("float32", "bfloat16")]
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs), encoding="utf-8")
    code, output = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         str(WORKER), str(path)], env=_environment(LSTMLM_TEST_BFLOAT16="1"))
    assert code == 0, output[-3000:]
    two = {precision: read_history(tmp_path / f"two-{precision}")[0]["valid_loss"]
           for precision in ("float32", "bfloat16")}
    assert rd.read_json(tmp_path / "two-bfloat16" / rd.CONFIG)["precision"] == "bfloat16"
    assert one["float32", 1] < math.log(1000) - 0.5  # it learned (uniform: 6.91 nats)
    assert two["float32"] == pytest.approx(one["float32", 1], abs=1e-4)  # float32: the same epoch
    assert two["bfloat16"] != two["float32"] and one["bfloat16", 1] != one["float32", 1]  # bfloat16 was used
    low, high = min(one.values()), max(one.values())
    assert low - tolerance <= two["bfloat16"] <= high + tolerance, (one, two)
