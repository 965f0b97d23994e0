#!/usr/bin/env python
"""The tutorial's own numbers for checkpoints of a run: accuracy as the Keras tutorial reports it, beside
lstmlm's exact figures.

    python benchmarks/tutorial_accuracy.py runs/tutorial --epochs 8,40 --threads 1 \\
        --out docs/runs/tutorial-to-epoch-40/tutorial-accuracy
    python benchmarks/tutorial_accuracy.py --quick      # seconds: a tiny run trained here, every check run

The tutorial (keras_lstm.py) reports `categorical_accuracy` from `fit_generator`: its KerasBatchGenerator cuts a
split into windows of num_steps (30) words advanced by skip_step (30), batch_size (20) windows a batch,
len(split) // (batch_size * num_steps) batches, and the stateless model starts every window from a zero state.
Every one of a window's num_steps predictions counts. That is what a reader compares (14.6% train / 4.7%
validation after 50 epochs, against a claimed ~40% / 20%). lstmlm's history instead records validation exactly
(one stream, the state carried through the whole split, every token), and train accuracy as the running
figure of the epoch with dropout on (the tutorial's training figure is that too).

For each checkpoint (`checkpoints/model-NN.keras`, what `lstmlm predict RUN --epoch N` loads) and each split this
prints the window accuracy and window perplexity, computed with lstmlm's own WindowBatches (batches.py, the
tutorial's generator) and the run's inference step model (its saved precision unless --precision), and the
exact accuracy and perplexity of `lstmlm evaluate RUN --split S --epoch N`. Results: OUT.json and OUT.md.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

SPLITS = ("train", "valid", "test")


def window_scores(model, ids):
    """The tutorial's validation measure on `ids`: {"windows", "tokens", "accuracy", "perplexity"}.

    Args:
        model: a loaded lstmlm.LanguageModel (its config gives batch_size, num_steps, skip_step).
        ids: the split as ids (no leading <eos>: the tutorial's generator reads the file as it is).
    """
    import numpy as np
    import torch

    from lstmlm.data.batches import WindowBatches

    config, step = model.config, model.step_model
    batches = WindowBatches(ids, config.batch_size, config.num_steps, config.skip_step or config.num_steps)
    hits = tokens = 0
    nll = 0.0
    with torch.no_grad():
        for x, y in batches.epoch():  # x, y: (batch_size, num_steps)
            outputs, _ = step.advance(x, step.initial_states(len(x)))  # a zero state per window: the stateless model
            logits = torch.from_numpy(np.asarray(step.logits(outputs)))  # (batch_size, num_steps, vocabulary)
            targets = torch.as_tensor(np.asarray(y, dtype=np.int64))
            hits += int((logits.argmax(-1) == targets).sum())
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            nll -= float(log_probs.gather(-1, targets[..., None]).sum(dtype=torch.float64))
            tokens += targets.numel()
    return {"windows": batches.steps_per_epoch * batches.batch_size, "tokens": tokens, "accuracy": hits / tokens,
            "perplexity": math.exp(nll / tokens)}


def measure(run_dir, epochs, splits, precision=None, log=print):
    """Window and exact figures for each epoch's checkpoint and split; also the run's history rows."""
    import csv

    import lstmlm
    from lstmlm.data.corpus import read_split
    from lstmlm.machine import cpu_info

    history = {}
    history_file = Path(run_dir) / "history.csv"
    if history_file.is_file():
        with history_file.open(encoding="utf-8") as file:
            history = {int(row["epoch"]): row for row in csv.DictReader(file)}
    rows = []
    for epoch in epochs:
        model = lstmlm.load(run_dir, precision=precision, epoch=epoch)
        for split in splits:
            ids, _ = read_split(model.config, split, model.vocabulary)
            started = time.perf_counter()
            windows = window_scores(model, ids)
            exact = model.evaluate(split)
            row = {"epoch": epoch, "split": split, "precision": model.precision, "window": windows,
                   "exact": {key: exact[key] for key in ("tokens", "accuracy", "perplexity")},
                   "seconds": time.perf_counter() - started}
            if epoch in history:
                prefix = "train" if split == "train" else "valid" if split == "valid" else None
                if prefix:
                    row["history"] = {"accuracy": float(history[epoch][f"{prefix}_accuracy"]),
                                      "perplexity": float(history[epoch][f"{prefix}_perplexity"])}
            rows.append(row)
            log(f"epoch {epoch} {split}: window accuracy {windows['accuracy']:.4f} perplexity "
                f"{windows['perplexity']:.2f} ({windows['tokens']:,} tokens) | exact accuracy "
                f"{exact['accuracy']:.4f} perplexity {exact['perplexity']:.2f} ({exact['tokens']:,} tokens) | "
                f"{row['seconds']:.0f} s")
    import torch

    return {"run": str(run_dir), "rows": rows, "machine": cpu_info(), "threads": torch.get_num_threads(),
            "command": " ".join(["python", "benchmarks/tutorial_accuracy.py", *sys.argv[1:]])}


def markdown(result):
    lines = [f"Run `{result['run']}`; {result['machine']['model']}, flags {' '.join(result['machine']['flags'])}; "
             f"{result['threads']} torch thread(s). Command: `{result['command']}`", "",
             "| epoch | split | precision | window accuracy (the tutorial's) | window perplexity | exact accuracy "
             "| exact perplexity | history (training's figure) |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        w, e, h = row["window"], row["exact"], row.get("history")
        history = f"acc {h['accuracy']:.4f}, ppl {h['perplexity']:.2f}" if h else ""
        lines.append(f"| {row['epoch']} | {row['split']} | {row['precision']} | {w['accuracy']:.4f} "
                     f"({w['tokens']:,} tokens) | {w['perplexity']:.2f} | {e['accuracy']:.4f} ({e['tokens']:,} tokens)"
                     f" | {e['perplexity']:.2f} | {history} |")
    return "\n".join(lines)


def quick(log=print):
    """A tiny windowed run trained here for 2 epochs; checks the window figures against a direct Keras pass."""
    import keras
    import numpy as np

    import lstmlm
    from lstmlm.data.batches import WindowBatches
    from lstmlm.data.corpus import read_split

    with tempfile.TemporaryDirectory() as directory:
        words = "the cat sat on the mat and the dog sat on the log".split()
        rng = np.random.default_rng(0)
        for split, count in (("train", 3000), ("valid", 600), ("test", 600)):
            text = "\n".join(" ".join(rng.choice(words, 12)) for _ in range(count // 12))
            Path(directory, f"{split}.txt").write_text(text + "\n", encoding="utf-8")
        run_dir = Path(directory) / "run"
        lstmlm.train(lstmlm.preset("tiny", batching="window", num_steps=6, skip_step=6, batch_size=4, epochs=2,
                                   train=f"{directory}/train.txt", valid=f"{directory}/valid.txt",
                                   test=f"{directory}/test.txt", precision="float32"),
                     out=run_dir, log=lambda line: None, progress=False)
        result = measure(run_dir, [2], ("valid",), log=log)
        row = result["rows"][0]
        # Independent: the Keras model itself, a window at a time, from a zero state.
        model = lstmlm.load(run_dir, epoch=2)
        ids, _ = read_split(model.config, "valid", model.vocabulary)
        hits = tokens = 0
        for x, y in WindowBatches(ids, 4, 6, 6).epoch():
            probabilities = keras.ops.convert_to_numpy(model.model(keras.ops.convert_to_tensor(x), training=False))
            hits += int((probabilities.argmax(-1) == y).sum())
            tokens += y.size
        ok = row["window"]["tokens"] == tokens and abs(row["window"]["accuracy"] - hits / tokens) < 1e-9
        log(f"quick: window accuracy {row['window']['accuracy']:.4f} vs Keras {hits / tokens:.4f} "
            f"({tokens} tokens): {'ok' if ok else 'MISMATCH'}")
        return result, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="a run directory with checkpoints/model-NN.keras")
    parser.add_argument("--epochs", default="40", help="comma-separated epochs whose checkpoints to measure")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits")
    parser.add_argument("--precision", help="inference precision (default: the run's saved one)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--out", help="output path prefix (.json and .md)")
    parser.add_argument("--quick", action="store_true", help="a tiny run trained here; exit 1 on a mismatch")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        return 0 if quick()[1] else 1
    if not args.run_dir:
        parser.error("run_dir is required (or --quick)")
    epochs = [int(epoch) for epoch in args.epochs.split(",")]
    result = measure(args.run_dir, epochs, args.splits.split(","), args.precision)
    print(markdown(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(markdown(result) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
