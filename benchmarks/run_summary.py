#!/usr/bin/env python
"""Summarise finished run directories as one small JSON artifact (no weights): each run's command, config
differences from its preset, precision, parameters, history and best validation, with the machine and load.

    python benchmarks/run_summary.py RUN [RUN...] --out docs/runs/NAME.json --note "how they were run"

For runs made by hand or by a shell loop (e.g. the 4-minute probes that chose `speedrun-char`): the run
directories hold config.json (command, config) and history.csv; this keeps what the docs cite from them.
The load average is the one at summary time plus whatever --note says about the time of the runs.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import race  # noqa: E402  (machine(), git_commit())


def number(text):
    try:
        return float(text)
    except ValueError:
        return text


def summary(run_dir):
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    with open(run_dir / "history.csv", encoding="utf-8", newline="") as handle:
        history = [{key: number(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    best = min(history, key=lambda row: row["valid_loss"]) if history else None
    return {"run": run_dir.name, "command": info.get("command"), "precision": info.get("precision"),
            "parameters": info.get("parameters"), "config": info.get("config"), "history": history,
            "best_valid": best, "training_seconds": history[-1]["wall_seconds"] if history else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    result = {"command": " ".join(["python", *sys.argv]), "git_commit": race.git_commit(), "note": args.note,
              "machine": race.machine(), "runs": [summary(run) for run in args.runs]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for run in result["runs"]:
        best = run["best_valid"]
        print(f"{run['run']}: best valid {best['valid_loss']:.4f} nats"
              + (f", {best['valid_bits_per_character']:.3f} bits per character" if "valid_bits_per_character" in best
                 else "") + f" at epoch {best['epoch']:g}, {best['tokens_per_second']:,.0f} tokens/s")


if __name__ == "__main__":
    main()
