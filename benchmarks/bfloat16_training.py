#!/usr/bin/env python
"""bfloat16 against float32 training, per optimizer: issue 23's table, rerun from the repository.

    python benchmarks/bfloat16_training.py --out docs/runs/bfloat16-training

Each row trains the same command three times from the same seed, at --threads 1, on PTB text cut as the issue
cut it: float32; bfloat16 as lstmlm trains it now (precision.training_lstm_precision); and bfloat16 with the
fused LSTM forced to bfloat16 as well, the path every optimizer took before issue 23's fix; then float32 twice
more, at seeds 2 and 3, for the scale of differences that are not the precision's. The validation loss of the last
epoch is what the table compares (nats per word, the whole validation text, lstmlm's evaluate).

bfloat16 runs on any CPU through torch (slowly where the CPU has no bfloat16 units): the capability check is
forced here, as in the tests, so the table can be rerun anywhere; the machine is recorded beside it.
"""

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

ROOT = Path(__file__).resolve().parent.parent
PTB = ROOT / "src" / "lstmlm" / "data" / "ptb"

# (name, preset, overrides, train lines, valid lines): issue 23's three rows
ROWS = [
    ("tiny, Adam 0.01", "tiny", dict(epochs=1), 10_000, None),
    ("tiny, SGD 1", "tiny", dict(epochs=1, optimizer="sgd", learning_rate=1.0), 10_000, None),
    ("tutorial, Adam 0.001, 2 epochs", "tutorial", dict(epochs=2), 5_000, 300),
]
VARIANTS = ("float32", "bfloat16", "bfloat16, LSTM in bfloat16 (before the fix)")
# The scale of honest differences: float32 itself from other seeds (other initial weights and dropout masks)
SPREAD_SEEDS = (2, 3)


def cut(split, lines, folder):
    """The first `lines` lines of PTB's `split` (all if None) as a text file; its path."""
    text = gzip.open(PTB / f"ptb.{split}.txt.gz", "rt", encoding="utf-8").read().splitlines(keepends=True)
    path = Path(folder) / f"ptb.{split}.{lines or 'all'}.txt"
    path.write_text("".join(text[:lines]), encoding="utf-8")
    return path


def train_one(preset_name, overrides, train_path, valid_path, variant, out, seed=1):
    """Train one variant; returns its history rows."""
    from lstmlm import precision, torch_backend
    from lstmlm.training import loop as loop_module
    from lstmlm.training import trainer as trainer_module
    from lstmlm.presets import preset
    from lstmlm.run_directory import read_history

    config = preset(preset_name, train=str(train_path), valid=str(valid_path), test=None, threads=1, seed=seed,
                    precision="float32" if variant == VARIANTS[0] else "bfloat16", **overrides)
    torch_backend.bfloat16_supported.cache_clear()
    original_support, original_rule = torch_backend.bfloat16_supported, precision.training_lstm_precision
    torch_backend.bfloat16_supported = lambda: True  # bfloat16 runs on any CPU through torch
    if variant == VARIANTS[2]:
        trainer_module.training_lstm_precision = lambda chosen, optimizer: chosen
    try:
        loop_module.train(config, out=out, log=lambda line: None, command=["benchmark"], progress=False)
    finally:
        torch_backend.bfloat16_supported, trainer_module.training_lstm_precision = original_support, original_rule
    return read_history(Path(out) / "history.csv")


def environment():
    import torch

    from lstmlm.machine import cpu_info

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                           text=True).stdout.strip()
    return {"commit": commit.strip() + ("+dirty" if dirty else ""), "cpu": cpu_info(), "torch": torch.__version__,
            "threads": 1, "load_average_start": [round(v, 2) for v in os.getloadavg()]}


def markdown(result):
    lines = [f"# bfloat16 against float32 training (issue 23)\n",
             f"Command: `{result['command']}`  ",
             f"Commit {result['environment']['commit']}; {result['environment']['cpu']['model']} "
             f"({' '.join(result['environment']['cpu']['flags'])}), 1 thread; load average "
             f"{result['environment']['load_average_start']} at the start, {result['load_average_end']} at the "
             f"end.\n",
             "Validation loss (nats per word) after the last epoch, seed 1 (the same weights, batches and dropout "
             "masks in every precision); the last column is float32's own range over seeds 1-3, the scale of "
             "differences that are not the precision's:\n",
             "| command | " + " | ".join(VARIANTS) + " | bfloat16 - float32 | float32, seeds 1-3 |",
             "|---|" + "---|" * 5]
    for row in result["rows"]:
        losses = [row["valid_loss"][variant] for variant in VARIANTS]
        seeds = [losses[0], *(row["valid_loss"][f"float32, seed {seed}"] for seed in SPREAD_SEEDS)]
        lines.append(f"| {row['name']} ({row['train_tokens']:,} training words) | "
                     + " | ".join(f"{loss:.3f}" for loss in losses) + f" | {losses[1] - losses[0]:+.3f} | "
                     f"{min(seeds):.3f}-{max(seeds):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/runs/bfloat16-training", help="output path prefix (.json, .md)")
    parser.add_argument("--rows", default="", help="comma-separated row numbers to run (default: all)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    chosen = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    arguments = ["python", "benchmarks/bfloat16_training.py", *(sys.argv[1:] if argv is None else argv)]
    result = {"command": " ".join(shlex.quote(a) for a in arguments),
              "environment": environment(), "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        for name, preset_name, overrides, train_lines, valid_lines in chosen:
            train_path, valid_path = cut("train", train_lines, folder), cut("valid", valid_lines, folder)
            row = {"name": name, "preset": preset_name, "overrides": overrides, "train_lines": train_lines,
                   "valid_lines": valid_lines, "valid_loss": {}, "seconds": {}}
            for variant in VARIANTS:
                started = time.time()
                history = train_one(preset_name, overrides, train_path, valid_path, variant,
                                    Path(folder) / f"{preset_name}-{len(result['rows'])}-{VARIANTS.index(variant)}")
                row["valid_loss"][variant] = history[-1]["valid_loss"]
                row["seconds"][variant] = round(time.time() - started, 1)
                row["train_tokens"] = history[-1]["train_tokens"]
                print(f"{name} | {variant}: valid loss {history[-1]['valid_loss']:.4f}", flush=True)
            for seed in SPREAD_SEEDS:
                history = train_one(preset_name, overrides, train_path, valid_path, VARIANTS[0],
                                    Path(folder) / f"{preset_name}-{len(result['rows'])}-seed{seed}", seed=seed)
                row["valid_loss"][f"float32, seed {seed}"] = history[-1]["valid_loss"]
                print(f"{name} | float32, seed {seed}: valid loss {history[-1]['valid_loss']:.4f}", flush=True)
            result["rows"].append(row)
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
