#!/usr/bin/env python
"""Fault injection: SIGKILL `lstmlm train` at seeded random moments, then prove nothing finished was lost.

    python benchmarks/faults.py                      # 32 kills, writes docs/reliability-latest.{json,md}
    python benchmarks/faults.py --kills 4 --quick    # a fast subset (what tests/test_reliability.py also covers)

Each trial trains the same tiny model on the same synthetic corpus, with a mid-epoch checkpoint every
`--checkpoint-minutes`, and kills it with SIGKILL at one of:
  step          inside the N-th training step           (lstmlm.failpoints, N drawn at random)
  write         inside the N-th file write, after the temporary file is complete and before its rename
  validation    at the start of the N-th validation pass
  before_state  between writing a checkpoint and writing the state.json that names it
  random time   after a random delay, wherever the process is (startup, a step, a write, validation)
After each kill: every .keras, .npz and state.json on disk must load; `lstmlm train --resume` must finish;
the final history.csv and weights must equal the unbroken run's (float32 on the CPU: to 1e-6); and the work
lost (the kill's time minus the last state.json's time) must be within the checkpoint interval plus one step
and one checkpoint write.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
LSTMLM = [sys.executable, "-m", "lstmlm"]
KINDS = ["step", "write", "validation", "before_state", "random time"]
SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "finds", "chases", "hears", "wants"]
OBJECTS = ["the ball", "a fish", "the house", "some bread", "the river", "a song"]


def write_corpus(directory, sentences, seed=1):
    rng = np.random.default_rng(seed)
    paths = {}
    for split, count in (("train", sentences), ("valid", sentences // 10), ("test", sentences // 10)):
        lines = [" ".join(words[rng.integers(len(words))] for words in (SUBJECTS, VERBS, OBJECTS))
                 for _ in range(count)]
        paths[split] = Path(directory) / f"toy.{split}.txt"
        paths[split].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def config_values(paths, epochs, checkpoint_minutes):
    return {"train": str(paths["train"]), "valid": str(paths["valid"]), "test": str(paths["test"]),
            "hidden_size": 16, "num_steps": 8, "batch_size": 8, "epochs": epochs, "optimizer": "adam",
            "learning_rate": 0.03, "learning_rate_schedule": "constant", "init_scale": 0.0, "sum_over_time": False,
            "clip_norm": 5.0, "seed": 1, "precision": "float32", "threads": 1,
            "checkpoint_minutes": checkpoint_minutes}


def train_command(config_path, out):
    return [*LSTMLM, "train", "--config", str(config_path), "--out", str(out), "--no-report"]


def run_to_end(command, environment=None):
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    return completed


def killed_run(config_path, out, kind, count, delay):
    """Start a run, kill it as `kind` says; returns (killed, start time, kill time)."""
    environment = {**os.environ}
    if kind != "random time":
        environment["LSTMLM_FAILPOINT"] = f"{kind}:{count}"
    started = time.time()
    process = subprocess.Popen(train_command(config_path, out), env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    if kind == "random time":
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
    process.communicate(timeout=900)
    return process.returncode == -signal.SIGKILL, started, time.time()


def check_files(run_dir):
    """Load every checkpoint-like file; returns the names that failed to load (should be none)."""
    import lstmlm  # noqa: F401
    from lstmlm import run_directory as rd

    failed = []
    for path in sorted(run_dir.rglob("*")):
        if path.name.startswith("."):  # a temporary left by the kill: never read by lstmlm
            continue
        try:
            if path.suffix == ".keras":
                rd.load_keras_model(path)
            elif path.suffix == ".npz":
                rd.load_arrays(path)
            elif path.suffix == ".json":
                rd.read_json(path)
        except Exception as error:  # noqa: BLE001 - any failure to load is what this counts
            failed.append(f"{path.name}: {error}")
    return failed


def same_as_reference(run_dir, reference):
    from lstmlm import run_directory as rd

    timing = {"tokens_per_second", "epoch_seconds", "wall_seconds"}
    ours, theirs = rd.read_history(run_dir / rd.HISTORY), rd.read_history(reference / rd.HISTORY)
    if len(ours) != len(theirs):
        return False
    for a, b in zip(ours, theirs):
        if any(abs(a[k] - b[k]) > 1e-6 * max(1.0, abs(b[k])) for k in a if k not in timing):
            return False
    last = f"checkpoints/model-{len(theirs):02d}.keras"
    for name in ("model.keras", last):
        wa, wb = rd.load_keras_model(run_dir / name).get_weights(), rd.load_keras_model(reference / name).get_weights()
        if not all(np.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(wa, wb)):
            return False
    return True


def trial(index, kind, rng, work, config_path, reference, ranges, run_seconds):
    out = work / f"trial-{index:02d}"
    count = int(rng.integers(1, ranges[kind] + 1)) if kind in ranges else 0
    delay = float(rng.uniform(0.5, run_seconds)) if kind == "random time" else 0.0
    killed, started, ended = killed_run(config_path, out, kind, count, delay)
    row = {"trial": index, "kind": kind, "count": count, "delay": round(delay, 2), "killed": killed,
           "kill_second": round(ended - started, 2)}
    # Work lost: from the newest state.json (the last consistent checkpoint) to the kill; with none, from the
    # process start (start-up included).
    state = out / "state.json"
    saved = state.stat().st_mtime if state.exists() else started
    row["lost_seconds"] = round(ended - saved, 2) if killed else 0.0
    row["unloadable"] = check_files(out) if out.exists() else []
    if out.exists() and (out / "config.json").exists():
        run_to_end([*LSTMLM, "train", "--resume", str(out), "--no-report"])
    else:  # killed before the run directory held a config: the same command starts it again
        run_to_end(train_command(config_path, out))
    row["equal_to_unbroken"] = same_as_reference(out, reference)
    row["survived"] = not row["unloadable"] and row["equal_to_unbroken"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=400, help="training sentences (40 batches an epoch)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="one trial of each kind but random time")
    parser.add_argument("--out", default="docs/reliability-latest", help="where the .json and .md go")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lstmlm-faults-"))
    paths = write_corpus(work, args.sentences)
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config_values(paths, args.epochs, args.checkpoint_minutes)))
    started = time.time()
    reference = work / "unbroken"
    completed = run_to_end(train_command(config_path, reference), {**os.environ, "PYTHONUNBUFFERED": "1"})
    run_seconds = time.time() - started
    steps = int(next(line for line in completed.stderr.splitlines() if "batches per epoch" in line)
                .split(" batches per epoch")[0].rsplit(", ", 1)[1].replace(",", "")) * args.epochs
    ranges = {"step": steps, "write": 4 * args.epochs + 6, "validation": args.epochs,
              "before_state": args.epochs + 2}
    kinds = KINDS[:4] if args.quick else [KINDS[i % len(KINDS)] for i in range(args.kills)]
    rows = []
    for index, kind in enumerate(kinds[: args.kills] if not args.quick else kinds):
        rows.append(trial(index, kind, rng, work, config_path, reference, ranges, run_seconds))
        print(json.dumps(rows[-1]), flush=True)
    write_report(rows, args, run_seconds, Path(args.out))
    return 0 if all(row["survived"] for row in rows) else 1


def write_report(rows, args, run_seconds, out):
    from lstmlm.machine import describe

    table = ["| fault | trials | killed | survived | largest work lost (s) |", "|---|---|---|---|---|"]
    for kind in KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        if mine:
            lost = [row["lost_seconds"] for row in mine if row["lost_seconds"] is not None]
            table.append(f"| {kind} | {len(mine)} | {sum(row['killed'] for row in mine)} | "
                         f"{sum(row['survived'] for row in mine)} | {max(lost) if lost else '-'} |")
    header = (f"Command: `python benchmarks/faults.py {' '.join(sys.argv[1:])}`; {describe()}; an unbroken run takes "
              f"{run_seconds:.1f} s (start-up included); checkpoint every {args.checkpoint_minutes:g} min.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "header": header}, indent=1))
    out.with_suffix(".md").write_text(header + "\n\n" + "\n".join(table) + "\n")
    print("\n".join([header, "", *table]))


if __name__ == "__main__":
    sys.exit(main())
