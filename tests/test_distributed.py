"""Data-parallel training (torch DDP, gloo on CPU, 2 processes): N ranks x B/N streams == 1 process x B streams.

Each launch starts real processes through torch's launcher (torchrun) or by hand, and has a timeout: a hang fails
the test instead of blocking CI. Start-up (importing torch and Keras in every process) dominates their time, so
one launch runs several training jobs (distributed_worker.py) and several tests read its results.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from lstmlm import cli
from lstmlm import distributed
from lstmlm import run_directory as rd
from lstmlm import training as train_module
from lstmlm.config import Config
from lstmlm.training import HISTORY_FIELDS, train

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT = 300  # seconds: generous for a busy 2-core machine; a hang fails instead of blocking CI
TIMING = {"tokens_per_second", "epoch_seconds", "wall_seconds"}
STEPS_PER_EPOCH = 24  # the toy corpus (1,899 training tokens) in 10 streams x 8 steps
INTERRUPT_STEP = STEPS_PER_EPOCH + 5  # in epoch 2, after 4 finished batches


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
def single_process(config, out, interrupt_at=None, monkeypatch=None):
    """Train in this process, recording every step's loss; interrupt_at: KeyboardInterrupt before that step."""
    real_step, losses = train_module.train_step, []

    def step(*args, **kwargs):
        if len(losses) + 1 == interrupt_at:
            raise KeyboardInterrupt
        loss, hits, states = real_step(*args, **kwargs)
        losses.append(float(loss))
        return loss, hits, states

    train_module.train_step = step
    try:
        train(config, out=out, log=lambda line: None, progress=False, command=["test"])
    except KeyboardInterrupt:
        pass
    finally:
        train_module.train_step = real_step
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
    """One torchrun launch of 2 ranks: the equivalence runs, a run interrupted on both ranks in epoch 2, and the
    2-rank resumption of a run interrupted in one process."""
    base = tmp_path_factory.mktemp("ddp")
    configs = equivalence_configs(toy_corpus)
    single_interrupted = base / "single-interrupted"
    single_process(configs["adam"], single_interrupted, interrupt_at=INTERRUPT_STEP)
    assert (single_interrupted / "checkpoints" / "interrupted.keras").exists()
    shutil.copytree(single_interrupted, base / "single-interrupted-resumed-by-2")
    jobs = [{"config": config.to_dict(), "out": str(base / name), "losses": str(base / f"{name}-losses")}
            for name, config in configs.items()]
    jobs.append({"config": configs["adam"].to_dict(), "out": str(base / "ddp-interrupted"),
                 "fault": {"rank": "all", "step": INTERRUPT_STEP, "kind": "interrupt"}})
    jobs.append({"resume": str(base / "single-interrupted-resumed-by-2")})
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


def test_interrupted_two_rank_run_saves_every_rank_states_in_single_process_order(two_ranks):
    ddp, single = two_ranks["base"] / "ddp-interrupted", two_ranks["single_interrupted"]
    assert two_ranks["output"].count("interrupted in epoch 2 after 4 batches") == 1  # rank 0 alone reports
    for out in (ddp, single):
        state = rd.read_json(out / rd.STATE)
        assert (state["epoch"], state["batch"], state["checkpoint"]) == (1, 4, "checkpoints/interrupted.keras")
    ddp_state, single_state = rd.read_json(ddp / rd.STATE), rd.read_json(single / rd.STATE)
    assert ddp_state["partial_sums"]["tokens"] == single_state["partial_sums"]["tokens"] == 4 * 10 * 8
    assert ddp_state["partial_sums"]["loss"] == pytest.approx(single_state["partial_sums"]["loss"], rel=1e-5)
    # 10 rows (rank 0's 5, then rank 1's), equal to the single-process states at the same point
    states = rd.load_arrays(ddp / ddp_state["states"])
    assert states["h0"].shape == (10, 16)
    # (cell states reach |c| ~ 9 here: float32 rounding of the different summation orders is ~1e-5 of that)
    assert_same_arrays(ddp / ddp_state["states"], single / single_state["states"], rtol=1e-5)
    assert_same_weights(ddp / "checkpoints/interrupted.keras", single / "checkpoints/interrupted.keras")
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == [
        "interrupted.keras", "model-01.keras", "optimizer-interrupted.npz", "states-interrupted.npz"]


def test_resume_across_process_counts(two_ranks, tmp_path):
    """A 2-rank checkpoint resumes in 2 ranks (lstmlm train --resume --processes 2) and in one process; a
    one-process checkpoint resumes in 2 ranks; all three finish exactly like the unbroken single-process run."""
    base, config = two_ranks["base"], two_ranks["configs"]["adam"]
    single_process(config, tmp_path / "unbroken")
    shutil.copytree(base / "ddp-interrupted", tmp_path / "ddp-in-one")
    train(None, resume=tmp_path / "ddp-in-one", log=lambda line: None, progress=False)
    shutil.copytree(base / "ddp-interrupted", tmp_path / "ddp-in-two")
    code, output = _run([sys.executable, "-m", "lstmlm", "train", "--resume", tmp_path / "ddp-in-two",
                         "--processes", "2", "--no-report"])
    assert code == 0, output[-3000:]
    assert "OMP_NUM_THREADS" not in output  # --processes sets the threads itself: no torchrun banner
    for resumed in (tmp_path / "ddp-in-one", tmp_path / "ddp-in-two", base / "single-interrupted-resumed-by-2"):
        assert_same_history(read_history(resumed), read_history(tmp_path / "unbroken"))
        assert_same_weights(resumed / "checkpoints/model-02.keras", tmp_path / "unbroken/checkpoints/model-02.keras")
        assert not (resumed / "checkpoints" / "interrupted.keras").exists()
    info = rd.read_json(tmp_path / "ddp-in-two" / rd.CONFIG)
    assert info["resumed"][-1].endswith("--processes 2 --no-report")


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
    from lstmlm.language_model import load

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
