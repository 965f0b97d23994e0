#!/usr/bin/env python
"""Training speed of Keras' `model.fit()` against lstmlm's own training step, side by side (docs/keras.md).

    python benchmarks/keras_fit.py --threads 1 --out docs/runs/keras-fit

Every row trains the tutorial's shape (2 x 500 LSTM, 10,000 words, batch 20 x 30 steps, Adam, float32, dropout
0.5 as in the tutorial) on the same windows (lstmlm.data.windows of a synthetic 10,000-word text) for --batches
timed batches after --warmup untimed ones, each row in its own process:
- fit() on torch and on JAX: `compile(optimizer="adam", loss=sparse cross-entropy from logits)` then `fit()`; a
  callback times each batch;
- lstmlm's step on torch: the Trainer and train_step `lstmlm train` runs (training needs torch, so no JAX row).
tokens/s = batch_size x num_steps / median seconds per batch. The JSON records the command, the commit, the CPU
(model and flags), the threads and the load average before and after; the markdown is the table for docs/keras.md.
Check it runs with a tiny shape: --hidden-size 16 --vocabulary-size 50 --batches 3 --warmup 1.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = (("torch", "fit"), ("jax", "fit"), ("torch", "lstmlm"))
LABELS = {"fit": "Keras fit()", "lstmlm": "lstmlm's training step (lstmlm train)"}


def synthetic_text(path, vocabulary_size, num_words, seed=0):
    """A text of `num_words` words over exactly `vocabulary_size` types (w0 w1 ..., each at least once)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.concatenate([np.arange(vocabulary_size), rng.integers(0, vocabulary_size, max(0, num_words))])
    words = [f"w{i}" for i in ids]
    path.write_text("".join(" ".join(words[i:i + 20]) + "\n" for i in range(0, len(words), 20)), encoding="utf-8")
    return path


def worker(args):
    """One row, in this process: prints {"seconds": [per timed batch]} as the last line."""
    import keras
    import numpy as np

    import lstmlm

    if args.threads and keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(args.threads)
    data = lstmlm.data.windows(args.text, num_steps=args.num_steps, batch_size=args.batch_size)
    total = args.warmup + args.batches
    if len(data) < total:
        raise SystemExit(f"the text has {len(data)} batches, {total} are needed")
    keras.utils.set_random_seed(1)
    model = lstmlm.LSTMLanguageModel(data.vocabulary_size, args.hidden_size, args.hidden_size, args.num_layers,
                                     dropout=0.5, seed=1)
    model.build((None, None))
    seconds = []
    if args.worker_method == "fit":
        class Clock(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                float(logs["loss"])  # the step is done when its loss is
                seconds.append(time.perf_counter() - self.start)

        model.compile(optimizer=keras.optimizers.Adam(0.001),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(data, epochs=1, steps_per_epoch=total, shuffle=False, verbose=0, callbacks=[Clock()])
    else:
        from lstmlm.config import Config
        from lstmlm.training import loop

        if hasattr(loop, "Trainer"):
            module = loop
        else:  # the training stage keeps its step in trainer.py now
            from lstmlm.training import trainer as module
        config = Config(hidden_size=args.hidden_size, num_layers=args.num_layers, batch_size=args.batch_size,
                        num_steps=args.num_steps, optimizer="adam", learning_rate=0.001, clip_norm=0.0,
                        dropout=0.5, init_scale=0.0, precision="float32", sum_over_time=False)
        trainer = module.Trainer(config, model, "float32")
        for index in range(total):
            x, y = data[index]
            start = time.perf_counter()
            loss, _, _ = module.train_step(trainer, x, y, model.initial_states(args.batch_size))
            float(loss)
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds[args.warmup:], "backend": keras.backend.backend(),
                      "keras": keras.__version__, "numpy": np.__version__}))


def run_row(backend, method, args, text):
    env = {**os.environ, "KERAS_BACKEND": backend}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if backend == "jax":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                + ("false" if args.threads == 1 else "true")).strip()
    command = [sys.executable, __file__, "--worker-method", method, "--text", str(text), *shape_arguments(args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        return {"backend": backend, "method": method, "error": result.stderr.strip().splitlines()[-1:]}
    seconds = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    median = statistics.median(seconds)
    return {"backend": backend, "method": method, "batches": len(seconds), "median_seconds_per_batch": median,
            "tokens_per_second": args.batch_size * args.num_steps / median}


def shape_arguments(args):
    return ["--hidden-size", str(args.hidden_size), "--num-layers", str(args.num_layers), "--vocabulary-size",
            str(args.vocabulary_size), "--batch-size", str(args.batch_size), "--num-steps", str(args.num_steps),
            "--batches", str(args.batches), "--warmup", str(args.warmup), "--threads", str(args.threads)]


def commit():
    def git(*arguments):
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + (" (uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no")
                                       else "")


def markdown(report):
    shape = report["shape"]
    lines = [f"Tutorial shape: {shape['num_layers']} x {shape['hidden_size']} LSTM, {shape['vocabulary_size']:,} "
             f"words, batch {shape['batch_size']} x {shape['num_steps']} steps, Adam, float32; "
             f"{report['threads'] or 'all'} thread(s); {report['cpu']['model']} "
             f"({' '.join(report['cpu']['flags']) or 'no notable flags'}); load average "
             f"{report['load_average_start']} before, {report['load_average_end']} after.", "",
             f"`{report['command']}` at {report['commit']}", "",
             "| backend | training | tokens/s | ms per batch |", "|---|---|---:|---:|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['backend']} | {LABELS[row['method']]} | failed: {' '.join(row['error'])} | |")
        else:
            lines.append(f"| {row['backend']} | {LABELS[row['method']]} | {row['tokens_per_second']:,.0f} | "
                         f"{1000 * row['median_seconds_per_batch']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=500)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vocabulary-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--num-steps", type=int, default=30)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (compilation, caches)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0 = the backend's default)")
    parser.add_argument("--backends", default="torch,jax", help="comma-separated: torch, jax")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md (default: print the table)")
    parser.add_argument("--worker-method", choices=["fit", "lstmlm"], help=argparse.SUPPRESS)
    parser.add_argument("--text", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_method:
        return worker(args)
    sys.path.insert(0, str(ROOT / "src"))
    from lstmlm.machine import cpu_info

    backends = args.backends.split(",")
    report = {"command": shlex.join(["python", "benchmarks/keras_fit.py", *(argv or sys.argv[1:])]),
              "commit": commit(), "cpu": cpu_info(), "threads": args.threads,
              "shape": {key: getattr(args, key) for key in ("hidden_size", "num_layers", "vocabulary_size",
                                                             "batch_size", "num_steps", "batches", "warmup")},
              "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as folder:
        words = (args.warmup + args.batches + 2) * args.batch_size * args.num_steps
        text = synthetic_text(Path(folder) / "train.txt", args.vocabulary_size, words)
        report["rows"] = [run_row(backend, method, args, text) for backend, method in ROWS if backend in backends]
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    table = markdown(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
