#!/usr/bin/env python
"""The spread of one epoch's validation loss over layouts, precisions and seeds: is 2 processes' result within the
spread of one process's?

    python benchmarks/distributed_spread.py --out docs/runs/distributed-spread  # 18 runs: 20 min, 2 cores at load 4-7
    python benchmarks/distributed_spread.py --seeds 1 --precisions bfloat16 --out /tmp/spread   # one column

Every run is `lstmlm train --preset small --epochs 1` (SGD at rate 1, the loss summed over time, clip 5, no
dropout) on the PTB slice of benchmarks/distributed.py (`ptb_files`: the first --train-tokens words of PTB's
training split, whole lines, then one line holding every word of the split, so the vocabulary and the softmax are
PTB's 10,000 words; validation on the first --valid-lines lines of PTB's validation split), run as a command, one
at a time, in the layouts 1 process x 1 thread (`--threads 1`), 1 process x 2 threads (`--threads 2`) and 2
processes x 1 thread (`--processes 2 --threads 1`), in each of --precisions (`--precision float32 | bfloat16`) and
at each of --seeds (`--seed S`: the initial weights; the batches are the same for every seed). Recorded per run:
the epoch's train and validation loss from history.csv, or, where the run stopped as diverged (run.py
`check_divergence`: a loss above ln(vocabulary) + 1 is an LstmlmError, exit status 2), that it did and the error
line; the load average before and after it.

A loss comparison, not a speed figure: a busy machine changes the time, not the numbers (up to the thread
count, which is one of the layouts). The spread of one process is the range over its two thread counts at one
(precision, seed); 2 processes are "inside" when their loss lies within that range widened by nothing.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "torch")

from distributed import environment, load, ptb_files  # noqa: E402  (benchmarks/distributed.py: the same slice)

LAYOUTS = {"1x1": ["--threads", "1"], "1x2": ["--threads", "2"], "2x1": ["--processes", "2", "--threads", "1"]}


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def train_command(files, layout, precision, seed, out):
    return [sys.executable, "-m", "lstmlm", "train", "--preset", "small", "--epochs", "1", "--train",
            str(files["train"]), "--valid", str(files["valid"]), "--precision", precision, "--seed", str(seed),
            *LAYOUTS[layout], "--out", str(out), "--no-report"]


def one_run(files, layout, precision, seed, out, timeout, log):
    command = train_command(files, layout, precision, seed, out)
    started, load_before = time.time(), load()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    row = {"layout": layout, "precision": precision, "seed": seed, "exit_status": completed.returncode,
           "diverged": False, "error": None, "train_loss": None, "valid_loss": None,
           "seconds": round(time.time() - started, 1), "load_before": load_before, "load_after": load()}
    errors = [line for line in completed.stderr.splitlines() if line.startswith("lstmlm: error")]
    history = Path(out) / "history.csv"
    if completed.returncode == 0 and history.exists():
        with history.open(encoding="utf-8") as file:
            last = list(csv.DictReader(file))[-1]
        row["train_loss"], row["valid_loss"] = float(last["train_loss"]), float(last["valid_loss"])
    elif errors and "diverged" in errors[0]:
        row["diverged"], row["error"] = True, errors[0]
    else:
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}:\n{completed.stderr[-3000:]}")
    log(f"{layout} {precision} seed {seed}: valid {row['valid_loss']} train {row['train_loss']}"
        f"{' DIVERGED: ' + row['error'] if row['diverged'] else ''} ({row['seconds']} s, load {load_before[0]})")
    return row


def spread(rows):
    """Per (precision, seed): the one-process range over its thread counts, and whether 2 processes lie in it."""
    table = []
    for precision in dict.fromkeys(r["precision"] for r in rows):
        for seed in dict.fromkeys(r["seed"] for r in rows):
            cell = {r["layout"]: r for r in rows if r["precision"] == precision and r["seed"] == seed}
            one = [cell[k]["valid_loss"] for k in ("1x1", "1x2") if k in cell and cell[k]["valid_loss"] is not None]
            two = cell.get("2x1", {}).get("valid_loss")
            entry = {"precision": precision, "seed": seed, **{k: cell[k]["valid_loss"] for k in cell},
                     "one_process_range": [min(one), max(one)] if one else None}
            entry["one_process_diverged"] = sum(cell[k]["diverged"] for k in ("1x1", "1x2") if k in cell)
            entry["two_processes_inside"] = (bool(one) and two is not None and min(one) <= two <= max(one))
            entry["two_processes_off_by"] = (None if not one or two is None else
                                             round(max(0.0, min(one) - two, two - max(one)), 5))
            table.append(entry)
    return table


def markdown(result):
    env = result["environment"]
    lines = [f"Measured {result['date']} at commit {result['commit'][:12]} with `{result['command']}`", "",
             f"CPU: {env['cpu']}, {env['cores']} cores, flags {' '.join(env['cpu_flags'])}; torch {env['torch']}, "
             f"keras {env['keras']}. Load average (1/5/15 min) at the start {result['load_start']}, at the end "
             f"{result['load_end']}.", "",
             f"One epoch of `--preset small` (SGD rate 1, loss summed over time, clip 5, no dropout) on "
             f"{result['train_tokens']:,} words of PTB train plus one line of every word, validating on "
             f"{result['valid_lines']} lines of PTB valid. Validation loss in nats per word (uniform over 10,000 "
             "words: 9.21; diverged: stopped by the divergence check).", "",
             "| precision | seed | 1 process x 1 thread | 1 process x 2 threads | 2 processes x 1 thread | "
             "one-process range | 2 processes inside |", "|---|---|---|---|---|---|---|"]

    def shown(entry, key):
        if key not in entry:
            return "-"
        return "diverged" if entry[key] is None else f"{entry[key]:.4f}"

    for entry in result["spread"]:
        low_high = entry["one_process_range"]
        inside = ("yes" if entry["two_processes_inside"] else "-" if entry["two_processes_off_by"] is None
                  else f"no (off by {entry['two_processes_off_by']})")
        if entry.get("one_process_diverged"):
            inside += "; the range leaves out the diverged one-process run"
        lines.append(f"| {entry['precision']} | {entry['seed']} | {shown(entry, '1x1')} | {shown(entry, '1x2')} | "
                     f"{shown(entry, '2x1')} | {f'{low_high[0]:.4f}-{low_high[1]:.4f}' if low_high else '-'} | "
                     f"{inside} |")
    lines.append("")
    for precision in dict.fromkeys(e["precision"] for e in result["spread"]):
        parts = []
        for layout in LAYOUTS:
            runs = [r for r in result["runs"] if r["precision"] == precision and r["layout"] == layout]
            values = [r["valid_loss"] for r in runs if r["valid_loss"] is not None]
            if runs:
                parts.append(f"{layout} " + (f"{min(values):.4f}-{max(values):.4f}" if values else "none finished")
                             + f" ({sum(r['diverged'] for r in runs)} of {len(runs)} diverged)")
        one = [r["valid_loss"] for r in result["runs"] if r["precision"] == precision and r["layout"] != "2x1"
               and r["valid_loss"] is not None]
        two = [r["valid_loss"] for r in result["runs"] if r["precision"] == precision and r["layout"] == "2x1"
               and r["valid_loss"] is not None]
        inside = one and two and min(one) <= min(two) and max(two) <= max(one)
        pooled = (f" 2 processes {'inside' if inside else 'outside'} the one-process range over all seeds."
                  if one and two else "")
        lines.append(f"- {precision}, over all seeds: " + "; ".join(parts) + "." + pooled)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output prefix: PREFIX.json and PREFIX.md")
    parser.add_argument("--train-tokens", type=int, default=10000, help="PTB training words (the doc's slice)")
    parser.add_argument("--valid-lines", type=int, default=200, help="lines of PTB valid to validate on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: recompute the spread and the markdown of --out's existing JSON")
    args = parser.parse_args(argv)
    prefix = Path(args.out)
    if args.render:
        result = json.loads(prefix.with_suffix(".json").read_text(encoding="utf-8"))
        result["spread"] = spread(result["runs"])
        prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        prefix.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
        print(markdown(result))
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv]),
              "commit": commit(), "environment": environment(), "python": platform.python_version(),
              "train_tokens": args.train_tokens, "valid_lines": args.valid_lines, "load_start": load(),
              "train_command": "python -m lstmlm train --preset small --epochs 1 --train TRAIN --valid VALID "
                               "--precision P --seed S {--threads 1 | --threads 2 | --processes 2 --threads 1} "
                               "--out DIR --no-report", "runs": []}
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        files = ptb_files(directory, args.train_tokens, args.valid_lines)
        for seed in args.seeds:  # seed-major, so a partial grid is still a set of complete comparisons
            for precision in args.precisions:
                for layout in args.layouts:
                    result["runs"].append(one_run(files, layout, precision, seed,
                                                  directory / f"{layout}-{precision}-{seed}", args.timeout, log))
    result["load_end"] = load()
    result["spread"] = spread(result["runs"])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    prefix.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
