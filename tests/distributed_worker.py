"""One rank of a data-parallel test: runs `lstmlm.training.loop.train` jobs from a JSON file, optionally with a fault.

Started by torchrun (`python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py
JOBS.json`) or by hand with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set. One launch runs several jobs, so
the tests pay the processes' start-up (imports: seconds on a busy machine) once.

A job: {"config": {Config fields} | null, "out": dir, "resume": dir | null, "epochs": n | null,
        "fault": {"rank": r | "all", "step": k, "kind": "signal" | "exit" | "hang"} | null,
        "losses": path | null}
where the fault happens at the start of the k-th call (1-based) of train_step in that job on that rank:
"signal" sends SIGTERM to the process itself (the step then runs to its end), "exit" ends the process at once
(os._exit(3)), "hang" sleeps for an hour; and "losses" writes this rank's loss of every step (the mean over its
own streams) to PATH.rankR.json.

LSTMLM_TEST_BFLOAT16=1 in the environment forces the bfloat16 capability check to answer yes (torch computes
bfloat16 on any CPU, only slower), as tests in one process do with monkeypatch, so bfloat16 runs are tested on any
machine.
"""

import json
import os
import signal
import sys
import time

import lstmlm  # noqa: F401  (registers the Keras classes)
from lstmlm.training import distributed
from lstmlm.training import epoch as epoch_module
from lstmlm.training import loop as loop_module
from lstmlm.config import Config
from lstmlm.errors import LstmlmError
from lstmlm import torch_backend

FORCE_BFLOAT16 = "LSTMLM_TEST_BFLOAT16"


def instrumented(real_step, fault, losses):
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if fault and fault["rank"] in ("all", distributed.rank()) and len(calls) == fault["step"]:
            if fault["kind"] == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
            elif fault["kind"] == "exit":
                os._exit(3)
            else:
                time.sleep(3600)
        loss, hits, states = real_step(*args, **kwargs)
        losses.append(float(loss))
        return loss, hits, states

    return step


def run_job(job):
    real_step, losses = epoch_module.train_step, []
    epoch_module.train_step = instrumented(real_step, job.get("fault"), losses)
    try:
        if job.get("resume"):
            config = Config(epochs=job["epochs"]) if job.get("epochs") else None
            loop_module.train(config, resume=job["resume"], progress=False, command=["worker"])
        else:
            loop_module.train(Config(**job["config"]), out=job["out"], progress=False, command=["worker"])
    except KeyboardInterrupt as interrupt:  # signals.Interrupted: the run saved its checkpoint and stopped
        print(f"rank {distributed.rank()}: stopped ({interrupt})", file=sys.stderr, flush=True)
    finally:
        epoch_module.train_step = real_step
    if job.get("losses"):
        with open(f"{job['losses']}.rank{distributed.rank()}.json", "w", encoding="utf-8") as file:
            json.dump(losses, file)


def main(jobs_file):
    with open(jobs_file, encoding="utf-8") as file:
        jobs = json.load(file)
    if os.environ.get(FORCE_BFLOAT16) == "1":
        torch_backend.bfloat16_supported = lambda: True
    try:
        distributed.init()
        for job in jobs:
            run_job(job)
    except LstmlmError as error:
        print(f"lstmlm: error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
