"""Markdown rows for the README's results table, measured from finished run directories.

    python benchmarks/results_table.py runs/ptb-small runs/ptb-speedrun [--json docs/ptb-results.json]

For each run: the best-validation model's valid and test perplexity (lstmlm's evaluate: one stream, state
carried, every token counted), the epochs trained, the training wall time (history.csv, evaluation included),
the median training tokens/s over its epochs, the threads and the machine recorded in config.json.
"""

import argparse
import json
import statistics
import sys

from lstmlm.inference.language_model import load
from lstmlm.machine import cpu_info


def training_cpu(info):
    """The CPU model config.json recorded for the training run (lstmlm.machine.cpu_info), else this machine's."""
    recorded = info.get("versions", {}).get("cpu")
    return recorded["model"] if isinstance(recorded, dict) and "model" in recorded else cpu_info()["model"]


def measure(run_dir):
    model = load(run_dir)
    history = model.run_directory.history
    info = model.run_directory.info
    results = {split: model.evaluate(split=split) for split in ("valid", "test")}
    best = min(history, key=lambda row: row["valid_loss"])
    return {
        "run": str(run_dir), "command": info.get("command"), "parameters": info.get("parameters"),
        "epochs": len(history), "best_epoch": best["epoch"],
        "valid_perplexity": results["valid"]["perplexity"], "test_perplexity": results["test"]["perplexity"],
        "test_accuracy": results["test"]["accuracy"], "test_tokens": results["test"]["tokens"],
        "wall_minutes": history[-1]["wall_seconds"] / 60,
        "tokens_per_second": statistics.median(row["tokens_per_second"] for row in history),
        "threads": info.get("config", {}).get("threads") or info.get("versions", {}).get("threads"),
        "device": info.get("device"), "precision": info.get("precision"), "cpu": training_cpu(info),
    }


def print_history(run_dir):
    from lstmlm.run_directory import read_history

    print(f"\n`{run_dir}` per epoch (train loss is the mean over the epoch's batches with dropout on; valid is "
          "the whole split, state carried):\n")
    print("| epoch | train loss (nats) | train ppl | train acc | valid loss (nats) | valid ppl | valid acc | "
          "lr | tokens/s | epoch time | wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in read_history(f"{run_dir}/history.csv"):
        print(f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_perplexity']:.1f} | {r['train_accuracy']:.4f} | "
              f"{r['valid_loss']:.4f} | {r['valid_perplexity']:.1f} | {r['valid_accuracy']:.4f} | "
              f"{r['learning_rate']:.4g} | {r['tokens_per_second']:,.0f} | {r['epoch_seconds']:.0f} s | "
              f"{r['wall_seconds'] / 60:.1f} min |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    parser.add_argument("--history", action="store_true", help="also print each run's per-epoch history")
    args = parser.parse_args(argv)
    rows = [measure(run) for run in args.runs]
    print("| run | parameters | valid ppl | test ppl | test accuracy | epochs (best) | wall time | tokens/s | "
          "threads | device |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['run']}` | {r['parameters'] / 1e6:.2f}M | {r['valid_perplexity']:.2f} | "
              f"{r['test_perplexity']:.2f} | {r['test_accuracy']:.4f} | {r['epochs']} ({r['best_epoch']}) | "
              f"{r['wall_minutes']:.1f} min | {r['tokens_per_second']:,.0f} | {r['threads']} | "
              f"{r['device']} {r['precision']} ({r['cpu']}) |")
    if args.history:
        for run in args.runs:
            print_history(run)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
