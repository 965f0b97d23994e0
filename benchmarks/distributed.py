#!/usr/bin/env python
"""Data-parallel speed on this machine: one process of T threads against N processes of T / N threads each, and
what DDP's gradient all-reduce costs per step.

    python benchmarks/distributed.py --presets small                    # one preset per command: minutes each
    python benchmarks/distributed.py --presets tutorial --train-tokens 60000
    python benchmarks/distributed.py --quick                            # CI smoke check: the tiny model, seconds

Results go to docs/distributed-latest-PRESETS.{json,md} (--out); docs/distributed.md discusses them.

Throughput: one epoch of `lstmlm.train` on the first --train-tokens words of PTB's training split (whole lines),
followed by one line holding every word of the whole split once, so the vocabulary (and the softmax's cost) is
PTB's 10,000 words; it validates on the first --valid-lines lines of PTB's validation split (validation is not what
is measured). A fixed amount of work rather than a time budget: on a loaded machine start-up times vary too much.
tokens/s is history.csv's: the epoch's training tokens over its training seconds (validation and start-up
excluded). First one process for each of --threads (default: 2, then 1), run inside this script; then N
processes started through torch.distributed.run (the code behind torchrun and `lstmlm train --processes N`), each
with its default of cores / N threads. The variants run one after the other, never at the same time, alternating
for --repeats rounds.

Communication (in the same N processes, after their training run): the bytes DDP all-reduces per step (every
trainable parameter's float32 gradient), the time of one all_reduce of a buffer that size (a timer around the call
after a barrier; median of --repeats-comm), the time of the per-batch agreement (one all_reduce of four numbers:
a held signal, a checkpoint due, the time budget, the clock), and the time of a whole training step with DDP's all-reduce against the same step under DDP.no_sync()
(no communication): the difference is what communication adds to a step (DDP overlaps the bucket reductions with
the backward pass, so it can be less than the bare all_reduce).
"""

import argparse
import contextlib
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

HERE = Path(__file__).resolve().parent
VOCABULARY = 10000


# ---- inputs ----------------------------------------------------------------------------------------------------
def ptb_text(split):
    from importlib import resources

    return gzip.decompress((resources.files("lstmlm") / "data" / "ptb" / f"ptb.{split}.txt.gz").read_bytes()).decode()


def ptb_files(directory, train_tokens, valid_lines, every_word=True):
    """Files in `directory`: the first lines of PTB train holding `train_tokens` words, then (every_word) every word
    of PTB train on one line, so the vocabulary stays PTB's; the first `valid_lines` lines of PTB valid."""
    directory = Path(directory)
    lines, kept, count = ptb_text("train").splitlines(keepends=True), [], 0
    for line in lines:
        if count >= train_tokens:
            break
        kept.append(line)
        count += len(line.split())
    if every_word:
        kept.append(" ".join(sorted({word for line in lines for word in line.split()})) + "\n")
    paths = {"train": directory / "ptb.train.txt", "valid": directory / "ptb.valid.txt"}
    paths["train"].write_text("".join(kept), encoding="utf-8")
    paths["valid"].write_text("".join(ptb_text("valid").splitlines(keepends=True)[:valid_lines]), encoding="utf-8")
    return paths


def run_config(preset_name, files, threads):
    from lstmlm.presets import preset

    return preset(preset_name, train=str(files["train"]), valid=str(files["valid"]), epochs=1, max_minutes=0,
                  threads=threads)


def load():
    return [round(value, 2) for value in os.getloadavg()]


def measured(out, started, load_before):
    """The throughput row of a finished run directory."""
    from lstmlm import run_directory as rd

    history, info = rd.read_history(Path(out) / rd.HISTORY), rd.read_json(Path(out) / rd.CONFIG)
    row = history[-1]
    layout = info.get("distributed", {"processes": 1, "threads_per_process": info["versions"]["threads"]})
    return {"processes": layout["processes"], "threads_per_process": layout["threads_per_process"],
            "precision": info["precision"], "vocabulary_size": info["vocabulary_size"],
            "tokens_per_second": row["tokens_per_second"],
            "train_tokens": row["train_tokens"], "train_seconds": round(row["train_tokens"] / row["tokens_per_second"], 1),
            "command_seconds": round(time.time() - started, 1), "load_before": load_before, "load_after": load()}


# ---- the two variants --------------------------------------------------------------------------------------------
def one_process(preset_name, files, threads, out, log):
    from lstmlm.training.loop import train

    started, load_before = time.time(), load()
    train(run_config(preset_name, files, threads), out=out, log=log, progress=False,
          command=["benchmarks/distributed.py"])
    return measured(out, started, load_before)


def processes(preset_name, files, count, out, result, comm_steps, comm_repeats, timeout, log):
    """N processes through torch.distributed.run, each running `worker` (train, then communication)."""
    spec = {"config": run_config(preset_name, files, 0).to_dict(), "out": str(out), "result": str(result),
            "steps": comm_steps, "repeats": comm_repeats}
    spec_path = Path(str(result) + ".spec.json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the ranks set their own threads (cores / N); no torchrun banner
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={count}",
               str(Path(__file__).resolve()), "--worker", str(spec_path)]
    started, load_before = time.time(), load()
    completed = subprocess.run(command, env=env, timeout=timeout, capture_output=True, text=True)
    for line in completed.stderr.splitlines():
        if line.startswith(("run ", "epoch ")):
            log(line)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    row = measured(out, started, load_before)
    return row, json.loads(Path(result).read_text())


# ---- inside each of the N processes ------------------------------------------------------------------------------
def worker(spec_path):
    import lstmlm  # noqa: F401
    from lstmlm.training import distributed
    from lstmlm.config import Config
    from lstmlm.training.loop import train

    spec = json.loads(Path(spec_path).read_text())
    distributed.init()
    try:
        config = Config(**spec["config"])
        train(config, out=spec["out"], progress=False, command=["benchmarks/distributed.py --worker"])
        result = communication(config, spec["steps"], spec["repeats"])
        if distributed.is_main():
            Path(spec["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    finally:
        distributed.destroy()


def communication(config, steps, repeats):
    """Gradient bytes, all_reduce time, and a step with and without DDP's all-reduce (see the module doc)."""
    import keras
    import numpy as np
    import torch
    import torch.distributed as dist

    from lstmlm.model.lstm_language_model import build_model
    from lstmlm.precision import resolve_precision
    from lstmlm.training import distributed
    from lstmlm.training.coordinator import coordinator
    from lstmlm.training.trainer import Trainer, train_step

    keras.utils.set_random_seed(config.seed)
    trainer = Trainer(config, build_model(config, VOCABULARY), resolve_precision(config.precision), coordinator())
    parameters = sum(p.numel() for p in trainer.parameters)
    buffer = torch.ones(parameters, dtype=torch.float32)

    def timed(call, count=1):
        dist.barrier()
        started = time.perf_counter()
        for _ in range(count):
            call()
        return (time.perf_counter() - started) / count

    all_reduce = [timed(lambda: dist.all_reduce(buffer)) for _ in range(repeats)]
    # what TrainingRun.agree sends after every batch: four flags and the clock
    agreement = [timed(lambda: distributed.all_reduce([0, 0, 0, 0, 1.0], "max"), 20) for _ in range(repeats)]

    rows = config.batch_size // dist.get_world_size()
    rng = np.random.default_rng(config.seed)
    x = rng.integers(0, VOCABULARY, size=(rows, config.num_steps))
    y = rng.integers(0, VOCABULARY, size=(rows, config.num_steps))
    states = trainer.model.initial_states(rows) if config.batching == "stream" else None

    def step():
        train_step(trainer, x, y, states)

    def without_communication():
        with trainer.forward.no_sync():
            step()

    timed(step, 2)  # warm-up: oneDNN primitives, DDP's first-iteration bucket rebuild
    synced, unsynced = [], []
    for _ in range(repeats):  # alternate, so a change in the machine's load hits both alike
        synced.append(timed(step, steps))
        unsynced.append(timed(without_communication, steps))
    return {"world_size": dist.get_world_size(), "backend": dist.get_backend(), "parameters": parameters,
            "gradient_bytes_per_step": parameters * 4, "all_reduce_ms": round(1e3 * statistics.median(all_reduce), 2),
            "agreement_ms": round(1e3 * statistics.median(agreement), 3),
            "step_ms_with_all_reduce": round(1e3 * statistics.median(synced), 1),
            "step_ms_without_communication": round(1e3 * statistics.median(unsynced), 1),
            "rows_per_process": rows, "num_steps": config.num_steps, "threads_per_process": torch.get_num_threads(),
            "timed_steps": steps, "repeats": repeats}


# ---- the report --------------------------------------------------------------------------------------------------
def environment():
    import keras
    import torch

    from lstmlm.machine import cpu_info

    info = cpu_info()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.path.exists(
        "/usr/bin/uptime") else ""
    return {"cpu": info["model"], "cpu_flags": info["flags"], "cores": info["cores"], "torch": torch.__version__,
            "keras": keras.__version__, "python": platform.python_version(), "uptime_at_start": uptime}


def markdown(result):
    lines = [f"Measured {result['date']} with `{result['command']}`", "",
             f"CPU: {result['environment']['cpu']}, {result['environment']['cores']} cores, flags "
             f"{' '.join(result['environment']['cpu_flags'])}; torch {result['environment']['torch']}, keras "
             f"{result['environment']['keras']}. `uptime` at the start: {result['environment']['uptime_at_start']}",
             "", "| preset | processes x threads | precision | tokens/s | train tokens | train s | load (1/5/15 min) "
             "before -> after |", "|---|---|---|---|---|---|---|"]
    for preset_name, block in result["presets"].items():
        for row in block["runs"]:
            lines.append(f"| {preset_name} | {row['processes']} x {row['threads_per_process']} | {row['precision']} | "
                         f"{row['tokens_per_second']:,.0f} | {row['train_tokens']:,} | {row['train_seconds']} | "
                         f"{row['load_before']} -> {row['load_after']} |")
    lines += ["", "| preset | parameters | gradient bytes / step | all_reduce ms | agreement ms | step ms with "
              "all-reduce | step ms without | rows x steps per process |", "|---|---|---|---|---|---|---|---|"]
    for preset_name, block in result["presets"].items():
        for comm in block["communication"]:
            lines.append(f"| {preset_name} | {comm['parameters']:,} | {comm['gradient_bytes_per_step'] / 1e6:.1f} MB | "
                         f"{comm['all_reduce_ms']} | {comm['agreement_ms']} | {comm['step_ms_with_all_reduce']} | "
                         f"{comm['step_ms_without_communication']} | {comm['rows_per_process']} x {comm['num_steps']} |")
    return "\n".join(lines) + "\n"


def run(presets, train_tokens, threads, count, repeats, valid_lines, comm_steps, comm_repeats, log, timeout=900,
        every_word=True):
    import lstmlm  # noqa: F401

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]),
              "environment": environment(), "presets": {}}
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        files = ptb_files(directory, train_tokens, valid_lines, every_word)
        for preset_name in presets:
            block = result["presets"][preset_name] = {"runs": [], "communication": []}
            for round_index in range(repeats):
                tag = f"{preset_name}-{round_index}"
                for count_threads in threads:
                    log(f"{preset_name}: 1 process x {count_threads} threads")
                    block["runs"].append(one_process(preset_name, files, count_threads,
                                                     directory / f"{tag}-1x{count_threads}", log))
                log(f"{preset_name}: {count} processes")
                row, comm = processes(preset_name, files, count, directory / f"{tag}-{count}",
                                      directory / f"{tag}-comm.json", comm_steps, comm_repeats, timeout, log)
                block["runs"].append(row)
                block["communication"].append(comm)
    return result


def write(result, prefix):
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = prefix.with_suffix(".json"), prefix.with_suffix(".md")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result), encoding="utf-8")
    return json_path, md_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small"], help="presets whose shapes to time")
    parser.add_argument("--train-tokens", type=int, default=100000, help="PTB training words per run")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="threads of the one-process runs")
    parser.add_argument("--processes", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (one process, N processes)")
    parser.add_argument("--valid-lines", type=int, default=200, help="lines of PTB valid to validate on")
    parser.add_argument("--comm-steps", type=int, default=10, help="timed steps per communication measurement")
    parser.add_argument("--comm-repeats", type=int, default=5, help="communication measurements (median)")
    parser.add_argument("--out", help="output prefix (default docs/distributed-latest-PRESETS)")
    parser.add_argument("--quick", action="store_true", help=(
        "CI smoke check: the tiny model, 2,000 words (and their own vocabulary), 1 process x 1 thread against 2"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.quick:
        args.presets, args.train_tokens, args.threads = ["tiny"], 2000, [1]
        args.valid_lines, args.comm_steps, args.comm_repeats = 20, 2, 2
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = run(args.presets, args.train_tokens, args.threads, args.processes, args.repeats, args.valid_lines,
                 args.comm_steps, args.comm_repeats, log, every_word=not args.quick)
    out = args.out or (HERE.parent / "docs" / f"distributed-latest-{'-'.join(args.presets)}")
    json_path, md_path = write(result, out)
    print(markdown(result))
    log(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
