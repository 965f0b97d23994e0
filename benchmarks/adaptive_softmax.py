#!/usr/bin/env python
"""Adaptive softmax against the full softmax on a large vocabulary (WikiText-2, 33,278 words): training speed
and validation perplexity after the same wall-clock budget. Results: docs/adaptive-softmax.md.

    python benchmarks/adaptive_softmax.py throughput --threads 1 --out docs/adaptive-softmax-throughput
    python benchmarks/adaptive_softmax.py budget --minutes 6 --threads 1 --runs runs/adaptive-bench \\
        --out docs/adaptive-softmax-budget
    python benchmarks/adaptive_softmax.py --quick      # seconds: synthetic Zipf text, a tiny model

1. `throughput`: training tokens/s of the same model (the speedrun preset's 2x256, batch 20 x 35 steps, untied
   and tied) with `--softmax full` and `--softmax adaptive`, through lstmlm's public Trainer / train_step /
   EpochProgress on the real WikiText-2 training stream (state carried). Warm-up steps, then `--repeats` rounds
   of `--steps` timed steps, the variants interleaved round by round (order reversed every other round), so a
   change in the machine's load hits every variant alike; the figure is the median step.
2. `budget`: two `lstmlm train --preset speedrun --max-minutes M` runs started at the same moment, one per
   softmax, each on `--threads` threads, and their validation perplexity (exact: batch 1, state carried, every
   one of the 217,646 validation tokens) when the budget ends.

Every result records the command, the CPU model and flags (lstmlm.machine.cpu_info()), the thread count and
`uptime`'s load averages before and after: the machine may be shared.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

DATA = Path(os.environ.get("WIKITEXT2", "/work/shared/data/wikitext-2"))
CUTOFFS = "2000,10000"
VARIANTS = {  # name -> config overrides on the speedrun preset
    "full, untied": dict(softmax="full", tie_weights=False),
    "adaptive, untied": dict(softmax="adaptive", tie_weights=False, cutoffs=CUTOFFS),
    "full, tied": dict(softmax="full", tie_weights=True),
    "adaptive, tied (adaptive input)": dict(softmax="adaptive", tie_weights=True, cutoffs=CUTOFFS),
}


def load_average():
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def environment(threads):
    import keras
    import torch

    from lstmlm.machine import cpu_info

    return {"cpu": cpu_info(), "torch": torch.__version__, "keras": keras.__version__, "torch_threads": threads,
            "load_average_1_5_15": load_average(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


# ---- 1. training tokens/s --------------------------------------------------------------------------------
class Variant:
    """One model and optimizer stepping through the training stream exactly as `lstmlm train` does."""

    def __init__(self, config, vocabulary_size, batches):
        import keras

        from lstmlm import torch_backend

        from lstmlm.precision import resolve_precision
        from lstmlm.model.lstm_language_model import build_model
        from lstmlm.training.epoch import Epoch
        from lstmlm.training.trainer import Trainer

        keras.utils.set_random_seed(config.seed)
        model = build_model(config, vocabulary_size)
        self.trainer = Trainer(config, model, resolve_precision(config.precision))
        self.progress = Epoch(1, self.trainer.device, states=model.initial_states(config.batch_size))
        self.batches, self.index, self.times, self.losses = batches, 0, [], []
        self.parameters = int(model.count_params())

    def step(self, timed=True):
        from lstmlm import torch_backend
        from lstmlm.precision import resolve_precision
        from lstmlm.training.trainer import train_step

        x, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        started = time.perf_counter()
        loss, hits, states = train_step(self.trainer, x, y, self.progress.states)
        self.progress.states = torch_backend.repackage_hidden(states)
        self.progress.add(loss, hits, x.size)
        loss = float(loss)  # a sync point, as the progress line's
        if timed:
            self.times.append(time.perf_counter() - started)
            self.losses.append(loss)


def time_training(base, vocabulary_size, batches, warmup, steps, repeats, variants=VARIANTS, log=print):
    variants = {name: Variant(base.replace(**overrides), vocabulary_size, batches)
                for name, overrides in variants.items()}
    for variant in variants.values():
        for _ in range(warmup):
            variant.step(timed=False)
    names = list(variants)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            for _ in range(steps):
                variants[name].step()
        log(f"round {round_index + 1}/{repeats}: " + ", ".join(
            f"{name} {statistics.median(v.times[-steps:]) * 1000:.0f} ms" for name, v in variants.items()))
    tokens = base.batch_size * base.num_steps
    rows = {}
    for name, variant in variants.items():
        median = statistics.median(variant.times)
        rows[name] = {"ms_per_step": round(median * 1000, 1), "tokens_per_second": round(tokens / median, 1),
                      "per_round_ms": [round(statistics.median(variant.times[i * steps:(i + 1) * steps]) * 1000, 1)
                                       for i in range(repeats)],
                      "timed_steps": len(variant.times), "parameters": variant.parameters,
                      "loss_first": round(variant.losses[0], 4), "loss_last": round(variant.losses[-1], 4),
                      "precision": variant.trainer.precision}
    speedups = {kind: round(rows[f"adaptive, {kind}" + (" (adaptive input)" if kind == "tied" else "")]
                            ["tokens_per_second"] / rows[f"full, {kind}"]["tokens_per_second"], 3)
                for kind in ("untied", "tied")}
    return {"tokens_per_step": tokens, "variants": rows, "speedup_adaptive_over_full": speedups}


def throughput(args, log=print):
    import torch

    from lstmlm.data.batches import stream_batches
    from lstmlm.data.corpus import load_corpus
    from lstmlm.presets import preset

    torch.set_num_threads(args.threads)
    base = preset("speedrun", train=str(DATA / "train.txt"), valid=str(DATA / "valid.txt"), max_vocabulary_size=0,
                  precision=args.precision, threads=args.threads)
    load_before = load_average()
    corpus = load_corpus(base)
    stream = stream_batches(corpus["train"], base.batch_size, base.num_steps)  # the real text, state carried
    batches = [(x.astype(np.int64), y.astype(np.int64))
               for x, y in itertools.islice(stream, args.warmup + args.steps * args.repeats)]
    result = time_training(base, len(corpus.vocabulary), batches, args.warmup, args.steps, args.repeats, log=log)
    tail_share = {f"band {i}": float(np.mean((corpus["train"] >= lo) & (corpus["train"] < hi)))
                  for i, (lo, hi) in enumerate(zip([0, 2000, 10000], [2000, 10000, len(corpus.vocabulary)]))}
    return {"mode": "throughput", "corpus": str(DATA), "vocabulary_size": len(corpus.vocabulary),
            "cutoffs": CUTOFFS, "train_token_share_per_band": tail_share, "environment": environment(args.threads),
            "load_average_before": load_before, "load_average_after": load_average(), **result}


def run_quick(warmup=1, steps=2, repeats=1, log=print):
    """The throughput measurement on synthetic Zipf text over 3,000 words with a 2x32 model: seconds."""
    import torch

    from lstmlm.presets import preset

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    vocabulary_size, base = 3000, preset("speedrun", hidden_size=32, num_steps=10, batch_size=4,
                                         precision="float32")
    p = 1.0 / np.arange(1, vocabulary_size + 1)
    ids = rng.choice(vocabulary_size, size=(warmup + steps * repeats, base.batch_size, base.num_steps + 1),
                     p=p / p.sum())
    batches = [(b[:, :-1].copy(), b[:, 1:].copy()) for b in ids]
    variants = {name: {**overrides, "cutoffs": "200,1000"} if "cutoffs" in overrides else overrides
                for name, overrides in VARIANTS.items()}
    result = time_training(base, vocabulary_size, batches, warmup, steps, repeats, variants, log)
    return {"mode": "quick", "vocabulary_size": vocabulary_size, "environment": environment(1), **result}


# ---- 2. perplexity after the same wall-clock budget ------------------------------------------------------
def budget(args, log=print):
    runs = Path(args.runs)
    for softmax in ("full", "adaptive"):
        if (runs / softmax).exists():
            raise SystemExit(f"{runs / softmax} exists: choose another --runs")
    runs.mkdir(parents=True, exist_ok=True)
    valid = DATA / "valid.txt"
    if args.valid_lines:  # validation inside the budget on a slice (the same for both); the full split after it
        lines = valid.read_text(encoding="utf-8").splitlines(keepends=True)[: args.valid_lines]
        valid = runs / f"valid-first-{args.valid_lines}-lines.txt"
        valid.write_text("".join(lines), encoding="utf-8")
    commands = {}
    for softmax in ("full", "adaptive"):
        commands[softmax] = ["lstmlm", "train", "--preset", "speedrun", "--train", str(DATA / "train.txt"),
                             "--valid", str(valid), "--max-vocabulary-size", "0", "--max-minutes", str(args.minutes),
                             "--threads", str(args.threads), "--softmax", softmax, "--out", str(runs / softmax),
                             "--no-report"] + (["--cutoffs", CUTOFFS] if softmax == "adaptive" else [])
    load_before, started = load_average(), time.time()
    loads = []
    statuses = run_side_by_side({name: command for name, command in commands.items()}, runs, loads)
    training_seconds = round(time.time() - started, 1)
    # The exact perplexity of each run's model.keras on the whole validation split (batch 1, state carried),
    # after the budget: `lstmlm evaluate RUN --file valid.txt`, both side by side, one thread each.
    evaluations = {f"{name}-evaluate": ["lstmlm", "evaluate", str(runs / name), "--file", str(DATA / "valid.txt"),
                                        "--json"] for name in commands}
    statuses.update(run_side_by_side(evaluations, runs, loads, threads=args.threads))
    from lstmlm.run_directory import read_history, read_json

    results = {}
    for softmax in commands:
        out = runs / softmax
        history = read_history(out / "history.csv")
        info = read_json(out / "config.json")
        last = history[-1] if history else {}
        evaluation_log = (runs / f"{softmax}-evaluate.log").read_text(errors="replace").splitlines()
        full_valid = json.loads(evaluation_log[-1]) if statuses[f"{softmax}-evaluate"] == 0 else None
        results[softmax] = {
            "command": " ".join(commands[softmax]), "exit_status": statuses[softmax],
            "parameters": info.get("parameters"), "precision": info.get("precision"),
            "train_tokens": sum(row["train_tokens"] for row in history),
            "train_tokens_per_second": training_speed(history),
            "wall_seconds_recorded": last.get("wall_seconds"),
            "in_budget_valid_perplexity": last.get("valid_perplexity"),
            "in_budget_valid_tokens": info.get("tokens", {}).get("valid"),
            "valid": full_valid, "evaluate_command": " ".join(evaluations[f"{softmax}-evaluate"]),
            "log_tail": (runs / f"{softmax}.log").read_text(errors="replace").splitlines()[-4:]}
        log(f"{softmax}: {results[softmax]['train_tokens']:,} training tokens; valid perplexity "
            f"{full_valid['perplexity'] if full_valid else 'not evaluated'} (whole split)")
    return {"mode": "budget", "minutes": args.minutes, "corpus": str(DATA), "cutoffs": CUTOFFS,
            "in_budget_validation": str(valid), "environment": environment(args.threads),
            "load_average_before": load_before,
            "load_average_1min_max": max((l[0] for l in loads if l), default=None),
            "load_average_1min_mean": round(statistics.mean(l[0] for l in loads if l), 2) if loads else None,
            "training_wall_seconds": training_seconds, "load_average_after": load_average(), "runs": results}


def training_speed(history):
    """Tokens per second of training time over every epoch row (each row's tokens / its tokens_per_second)."""
    seconds = sum(row["train_tokens"] / row["tokens_per_second"] for row in history if row["tokens_per_second"])
    return round(sum(row["train_tokens"] for row in history) / seconds, 1) if seconds else None


def run_side_by_side(commands, directory, loads, threads=None):
    """Start every command at once (`lstmlm` = this Python's `-m lstmlm`), log to DIRECTORY/NAME.log, wait;
    sample the load average every 10 s into `loads`. Returns {name: exit status}."""
    environment = dict(os.environ)
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)  # evaluate has no --threads: torch reads this at start
    processes = {}
    for name, command in commands.items():
        log_file = open(directory / f"{name}.log", "w")
        argv = [sys.executable, "-m", "lstmlm", *command[1:]] if command[0] == "lstmlm" else command
        processes[name] = (subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=environment),
                           log_file)
    while any(process.poll() is None for process, _ in processes.values()):
        time.sleep(10)
        loads.append(load_average())
    for _, log_file in processes.values():
        log_file.close()
    return {name: process.returncode for name, (process, _) in processes.items()}


def write(result, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.with_suffix(".json")
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=["throughput", "budget"], default="throughput")
    parser.add_argument("--quick", action="store_true", help="synthetic data, tiny model, seconds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=6.0, help="budget: --max-minutes of each run")
    parser.add_argument("--runs", default="runs/adaptive-softmax-budget", help="budget: where the two runs go")
    parser.add_argument("--valid-lines", type=int, default=400, help="budget: validate inside the budget on the "
                        "first N lines of valid.txt (0 = all); the whole split is evaluated after the budget")
    parser.add_argument("--out", help="write the result as OUT.json")
    args = parser.parse_args(argv)
    if args.quick:
        result = run_quick()
    elif args.part == "throughput":
        result = throughput(args)
    else:
        result = budget(args)
    print(json.dumps(result, indent=2))
    if args.out:
        print(f"wrote {write(result, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
