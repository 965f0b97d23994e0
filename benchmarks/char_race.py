#!/usr/bin/env python
"""The char race: lstmlm's character recipe against the real nanoGPT on PTB-char, same budget, same threads.

    N=--nanogpt-dir=/work/peers/nanoGPT          # a karpathy/nanoGPT git checkout, outside this repository
    python benchmarks/char_race.py $N --minutes 15 --threads 1                  # both at the same time
    python benchmarks/char_race.py $N --minutes 60 --threads 2 --sequential     # each side has the machine
    python benchmarks/char_race.py $N --quick     # smoke run: a PTB-char slice, 20-second budgets

The text: lstmlm's bundled `ptb-char` (`bundled_text("ptb-char", split)`: 5,017,482 / 393,042 / 442,423
characters, newlines included, 50 distinct). Each side is its own subprocess with T threads (OMP_NUM_THREADS /
MKL_NUM_THREADS = T, race.child_environment) and the same wall-clock budget, which starts when its training starts.
  - lstmlm: `python -m lstmlm train --preset speedrun-char --max-minutes M --threads T --seed S --out RUN
    --no-report` (its budget starts after corpus reading and covers training plus its validations); its model is
    the best-validation model.keras, the last one it saved. Scored by `python -m lstmlm evaluate RUN --split test
    --json --precision float32` (and --split valid): the split as one stream at batch 1, state carried, preceded
    by `<eos>` (a newline), every character counted, newlines included; float32 ("exact"), whatever precision
    it trained in.
  - nanoGPT: its train.py, unmodified, run from its checkout with the CPU command of its README (config/
    train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
    --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0), with --dataset=ptb_char
    --out_dir=OUT/nanogpt-out and three values chosen for the budget instead of the README's 2000 iterations
    (about 3 minutes): --max_iters = --lr_decay_iters = the iterations that fit in 97% of the budget at the
    milliseconds per iteration it prints in a calibration run before the race (the same command, the same
    threads, stopped after --calibration-seconds; side by side two copies run at once, as the race will load
    the machine), so that its cosine decay ends with the budget; --eval_interval = max_iters / 15, so it
    evaluates and may checkpoint 15 times (the 3% leaves room for those evaluations, 40 forward batches each).
    always_save_checkpoint stays False as its config sets it: it writes ckpt.pt when its estimated val loss
    improves, so its last checkpoint is its best-validation model, the same rule as lstmlm's model.keras (its
    estimate is noisy, so its final model may go unsaved; --nanogpt-always-save passes True to count it instead).
    Its data: data/ptb_char/ (data/ptb_char_quick/ for --quick) inside the checkout, written here the way its
    data/shakespeare_char/prepare.py writes them (data files, no code: train.bin and val.bin = the train and
    valid text as uint16 ids, meta.pkl = {vocab_size, itos, stoi}; the vocabulary is the sorted characters of
    the training text). Its seed is its own (torch.manual_seed(1337) in train.py; --seed is lstmlm's).
    The budget: train.py has no clock. It starts when its training loop starts (the arrival of its "iter 0"
    line minus the milliseconds that line prints: its step-0 evaluation and first iteration). At the deadline
    it gets SIGTERM (SIGKILL 10 s later). A checkpoint counts if its file was completely written before the
    deadline: after each "saving checkpoint" line, the next "iter" line (or a clean exit) says the write is
    over, and ckpt.pt is copied aside then (nanogpt-checkpoint.pt, its mtime kept) if its mtime is within the
    budget, so a write that ends after the deadline cannot replace the counted one. If a write is under way at
    the deadline, the signal waits for it (at most 5 s); it still counts only if it ended in time.
  - nanoGPT's scores (a subprocess with T threads, `char_race.py --score-nanogpt`): ckpt.pt loaded with
    torch.load(weights_only=True), GPT(GPTConfig(**model_args)) from the checkout's own model.py (imported by
    path), its state_dict with the `_orig_mod.` prefix stripped as its sample.py does, eval mode. The text is
    preceded by a newline (as lstmlm's `<eos>`), so every character, newlines included, is predicted exactly
    once. Windows of block_size (64) tokens: the first scores all its positions; each next one starts
    block_size/2 later and scores only its last block_size/2 positions; when the text's end does not fall on
    that grid, one last window ends at the text's end and scores the positions not yet scored. So each
    character after the first 64 is predicted from the 33 to 64 characters just before it (the first 64 from
    all characters before them, the leading newline included). log-softmax over its full logits (its forward returns all
    positions when given targets). Characters of the text outside its vocabulary stop the race with an error.
    Its printed "val loss" is another number: an estimate in nats per character over 20 random batches of 12
    windows, each position's context from the window start; it is reported for reference only.
Both results: loss in nats per character, bits per character = nats / ln 2, characters scored.
Side by side (the default) both train at once, T threads each, and each side's final scoring waits until both
have stopped training; `--sequential` runs lstmlm, then nanoGPT (its calibration runs first, alone).
--quick: the first 1,500 lines of train, and the first 100 lines of valid and of test whose characters all occur
in them (a slice lacks some of the 50 characters), for both sides (lstmlm through --train/--valid/--test).
Output (--out, default runs/race/ptb-char-Mmin-Tt-MODE/): result.json, result.md, the lstmlm run directory,
nanoGPT's out dir and counted checkpoint, each subprocess' log.
"""

import argparse
import csv
import hashlib
import importlib.util
import json
import math
import os
import pickle
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import race  # noqa: E402

NANOGPT_DIR = "/work/peers/nanoGPT"
PRESET = "speedrun-char"
# nanoGPT README's CPU command, in its order; max_iters and lr_decay_iters (2000 there) are set for the budget
README_COMMAND = ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                  "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
                  "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
EVALUATIONS = 15  # nanoGPT evaluates (and may checkpoint) this many times in its budget
BUDGET_SHARE = 0.97  # of the budget its iterations are sized to fill; the rest is for those evaluations
HOLD_SECONDS = 5.0  # at most this long the stop waits for a checkpoint write under way at the deadline
KILL_AFTER_SECONDS = 10.0
QUICK_LINES = {"train": 1500, "valid": 100, "test": 100}
QUICK_MINUTES = 1 / 3
SPLITS = ("train", "valid", "test")
ITER = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms")
STEP = re.compile(r"^step (\d+): train loss (\S+), val loss (\S+)")
SAVE = re.compile(r"^saving checkpoint to ")
TOKENS_PER_ITER = re.compile(r"^tokens per iteration will be: ([\d,]+)")


# ---- the text ------------------------------------------------------------------------------------------------
def ptb_char_texts(quick=False):
    """{split: text} of lstmlm's bundled PTB-char; --quick: the first lines of train, and the first lines of
    valid and test whose characters all occur in that slice (the first 100 hold '/' and '\\', which it lacks)."""
    from lstmlm.data.corpus import bundled_text

    texts = {split: bundled_text("ptb-char", split) for split in SPLITS}
    if not quick:
        return texts
    train = "".join(texts["train"].splitlines(keepends=True)[:QUICK_LINES["train"]])
    seen = set(train)
    sliced = {"train": train}
    for split in ("valid", "test"):
        lines = [line for line in texts[split].splitlines(keepends=True) if set(line) <= seen]
        sliced[split] = "".join(lines[:QUICK_LINES[split]])
    return sliced


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_atomically(path, data):
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_texts(texts, directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (directory / f"{split}.txt").write_text(text, encoding="utf-8")
    return {split: directory / f"{split}.txt" for split in texts}


# ---- nanoGPT's data, as its prepare.py writes them -----------------------------------------------------------
def vocabulary(train_text):
    """nanoGPT's char vocabulary: the sorted characters of the training text (data/shakespeare_char/prepare.py)."""
    return sorted(set(train_text))


def encode(text, stoi, name):
    """The text as uint16 ids; a character outside the vocabulary is an error, never dropped."""
    import numpy as np

    unseen = sorted(set(text) - set(stoi))
    if unseen:
        raise SystemExit(f"char_race: error: {name} has characters nanoGPT's vocabulary lacks: {unseen!r}")
    return np.array([stoi[c] for c in text], dtype=np.uint16)


def prepare_nanogpt_data(checkout, dataset, texts):
    """data/DATASET/{train.bin, val.bin, meta.pkl} in the checkout (train.py reads them relative to its cwd)."""
    chars = vocabulary(texts["train"])
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    directory = Path(checkout) / "data" / dataset
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / "train.bin", encode(texts["train"], stoi, "train").tobytes())
    write_atomically(directory / "val.bin", encode(texts["valid"], stoi, "valid").tobytes())
    write_atomically(directory / "meta.pkl", pickle.dumps({"vocab_size": len(chars), "itos": itos, "stoi": stoi}))
    return directory, chars


# ---- nanoGPT: provenance, command -----------------------------------------------------------------------------
def nanogpt_checkout(path):
    path = Path(path)
    if not (path / "train.py").is_file() or not (path / "model.py").is_file():
        raise SystemExit(f"char_race: error: --nanogpt-dir {path}: no train.py and model.py (git clone "
                         "https://github.com/karpathy/nanoGPT outside this repository)")
    return path.resolve()


def provenance(checkout):
    """Its commit and whether its tracked files differ from it (its data/ files are ignored by its .gitignore)."""
    def git(*words):
        try:
            return subprocess.run(["git", "-C", str(checkout), *words], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"directory": str(checkout), "commit": git("rev-parse", "HEAD"),
            "unmodified": None if changes is None else changes == "",
            "repository": "https://github.com/karpathy/nanoGPT"}


def nanogpt_command(python, dataset, out_dir, max_iters, eval_interval, always_save=False):
    """README's CPU command with the budget's max_iters / lr_decay_iters, and eval_interval, dataset, out_dir."""
    chosen = {"--max_iters": max_iters, "--lr_decay_iters": max_iters}
    command = [python]
    for part in README_COMMAND:
        key = part.split("=", 1)[0]
        command.append(f"{key}={chosen[key]}" if key in chosen else part)
    command += [f"--eval_interval={eval_interval}", f"--dataset={dataset}", f"--out_dir={out_dir}"]
    return command + (["--always_save_checkpoint=True"] if always_save else [])


def schedule(budget_seconds, ms_per_iter):
    """(max_iters, eval_interval): iterations filling BUDGET_SHARE of the budget, EVALUATIONS evaluations."""
    iterations = BUDGET_SHARE * budget_seconds / (ms_per_iter / 1000)
    eval_interval = max(1, round(iterations / EVALUATIONS))
    return eval_interval * EVALUATIONS, eval_interval


# ---- nanoGPT under a budget -----------------------------------------------------------------------------------
def run_nanogpt(command, checkout, env, budget_seconds, out_dir, kept_path, log_path, timeout):
    """Run train.py, SIGTERM at the budget, keep the last checkpoint written within it (module docstring)."""
    started, started_wall = time.monotonic(), time.time()
    state = {"training_started": None, "deadline_wall": None, "iters": [], "steps": [], "saves": [],
             "pending_save": None, "kept": None, "tokens_per_iter": None}

    def keep(step):
        path = Path(out_dir) / "ckpt.pt"
        mtime = path.stat().st_mtime if path.is_file() else None
        record = {"iter_num": step, "seconds_after_training_start":
                  None if mtime is None else round(mtime - (started_wall + state["training_started"]), 3)}
        record["within_budget"] = mtime is not None and mtime <= state["deadline_wall"]
        if record["within_budget"]:
            temporary = Path(kept_path).with_name(f".{Path(kept_path).name}.tmp")
            shutil.copy2(path, temporary)
            os.replace(temporary, kept_path)
            state["kept"] = record
        state["saves"].append(record)
        state["pending_save"] = None

    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ (cd " + shlex.quote(str(checkout)) + " && " + shlex.join(command) + ")\n")
        log.flush()
        process = subprocess.Popen(command, cwd=checkout, env={**env, "PYTHONUNBUFFERED": "1"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)

        def read():
            for line in process.stdout:
                now = time.monotonic() - started
                log.write(line)
                log.flush()
                if match := ITER.match(line):
                    if state["training_started"] is None:
                        state["training_started"] = now - float(match.group(3)) / 1000
                        state["deadline_wall"] = started_wall + state["training_started"] + budget_seconds
                    if state["pending_save"] is not None:
                        keep(state["pending_save"])
                    state["iters"].append({"iter": int(match.group(1)), "loss": float(match.group(2)),
                                           "ms": float(match.group(3)), "at": round(now, 3)})
                elif match := STEP.match(line):
                    state["steps"].append({"step": int(match.group(1)), "train_loss": float(match.group(2)),
                                           "val_loss": float(match.group(3)), "at": round(now, 3)})
                elif SAVE.match(line):
                    state["pending_save"] = state["steps"][-1]["step"] if state["steps"] else None
                elif match := TOKENS_PER_ITER.match(line):
                    state["tokens_per_iter"] = int(match.group(1).replace(",", ""))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stopped_at, status, held_since = None, None, None
        try:
            while process.poll() is None:
                now = time.monotonic() - started
                deadline = None if state["training_started"] is None else state["training_started"] + budget_seconds
                if stopped_at is None and deadline is not None and now >= deadline:
                    held_since = now if held_since is None else held_since
                    if state["pending_save"] is None or now - held_since >= HOLD_SECONDS:
                        process.terminate()
                        stopped_at = now
                if stopped_at is not None and now - stopped_at > KILL_AFTER_SECONDS:
                    process.kill()
                if now > timeout:
                    process.kill()
                    status = "timeout"
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=30)
        if state["pending_save"] is not None and process.returncode == 0:  # saved, then ended by itself
            keep(state["pending_save"])
        if status is None:
            status = process.returncode
    return {"status": status, "process_seconds": time.monotonic() - started, "stopped_at": stopped_at, **state}


def calibrate(python, checkout, dataset, out, threads, seconds, copies, timeout=600):
    """Milliseconds per iteration train.py prints at these threads: `copies` runs at once (2 side by side),
    each stopped `seconds` after its training starts; the median of its iterations 5 and later (iteration 0
    includes its step-0 evaluation), averaged over the copies."""
    results = [None] * copies

    def one(index):
        out_dir = out / f"nanogpt-calibration-{index}"
        command = nanogpt_command(python, dataset, out_dir, 10 ** 7, 10 ** 7)
        results[index] = run_nanogpt(command, checkout, race.child_environment(threads), seconds, out_dir,
                                     out_dir / "unused.pt", out / f"nanogpt-calibration-{index}.log", timeout)

    workers = [threading.Thread(target=one, args=(index,)) for index in range(copies)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    medians = []
    for index, run in enumerate(results):
        times = [row["ms"] for row in run["iters"] if row["iter"] >= 5] or [row["ms"] for row in run["iters"][1:]]
        if not times:
            raise SystemExit(f"char_race: error: nanoGPT's calibration printed no iterations (exit {run['status']}):"
                             f"\n{race.log_tail(out / f'nanogpt-calibration-{index}.log')}")
        medians.append(statistics.median(times))
    return {"ms_per_iter": round(statistics.mean(medians), 3), "copies": copies, "seconds": seconds,
            "medians": medians, "iterations": [len(run["iters"]) for run in results]}


def nanogpt_side(args, python, texts_dir, out, timeout, calibration, fence):
    """Run nanoGPT for the race and score its counted checkpoint; returns its side of result.json."""
    checkout = nanogpt_checkout(args.nanogpt_dir)
    budget = 60 * args.minutes
    if args.nanogpt_max_iters:
        max_iters, eval_interval = args.nanogpt_max_iters, max(1, args.nanogpt_max_iters // EVALUATIONS)
    else:
        max_iters, eval_interval = schedule(budget, calibration["ms_per_iter"])
    out_dir, kept = out / "nanogpt-out", out / "nanogpt-checkpoint.pt"
    command = nanogpt_command(python, args.dataset, out_dir, max_iters, eval_interval, args.nanogpt_always_save)
    side = {"side": "nanogpt", "commands": [f"cd {shlex.quote(str(checkout))} && {race.shown(command)}"],
            "threads": args.threads, "max_iters": max_iters, "eval_interval": eval_interval,
            "always_save_checkpoint": args.nanogpt_always_save, "seed": "1337 (train.py's own)"}
    run = run_nanogpt(command, checkout, race.child_environment(args.threads), budget, out_dir, kept,
                      out / "nanogpt-train.log", timeout)
    side["waited_for_the_other_side_seconds"] = fence.trained("nanogpt")
    side["process_seconds"] = round(run["process_seconds"], 2)
    side.update(summarise_nanogpt(run, budget, len(Path(texts_dir, "train.txt").read_text(encoding="utf-8"))))
    if run["kept"] is None:
        return {**side, "error": f"no checkpoint written within the budget (exit {run['status']})",
                "log_tail": race.log_tail(out / "nanogpt-train.log")}
    command = [python, str(Path(__file__).resolve()), "--score-nanogpt", str(kept), "--nanogpt-dir", str(checkout),
               "--texts", str(texts_dir), "--threads", str(args.threads), "--json", str(out / "nanogpt-scores.json")]
    side["commands"].append(race.shown(command))
    status, seconds = race.run_logged(command, out / "nanogpt-score.log", args.threads, timeout)
    side["score_process_seconds"] = round(seconds, 2)
    if status != 0:
        return {**side, "error": f"scoring exited {status}", "log_tail": race.log_tail(out / "nanogpt-score.log")}
    scores = json.loads((out / "nanogpt-scores.json").read_text(encoding="utf-8"))
    if scores["iter_num"] != run["kept"]["iter_num"]:
        return {**side, "error": f"the counted checkpoint holds iter {scores['iter_num']}, its log said "
                                 f"{run['kept']['iter_num']}"}
    return {**side, "parameters": scores["parameters"], "block_size": scores["block_size"],
            "vocabulary": scores["vocabulary"], "final": scores["final"],
            "final_evaluation_seconds": round(sum(v["seconds"] for v in scores["final"].values()), 2)}


def summarise_nanogpt(run, budget, train_characters):
    """Its numbers from the lines it printed before the deadline (iterations, speed, its own val estimates)."""
    start = run["training_started"]
    if start is None:
        return {"stopped_by": f"exit {run['status']} before its first iteration"}
    deadline = start + budget
    iters = [row for row in run["iters"] if row["at"] <= deadline]
    steps = [row for row in run["steps"] if row["at"] <= deadline]
    per_iter = run["tokens_per_iter"] or 0
    iterations = iters[-1]["iter"] + 1 if iters else 0
    ended = min(iters[-1]["at"], deadline) if iters else start
    median_ms = statistics.median([row["ms"] for row in iters if row["iter"] >= 1]) if len(iters) > 1 else None
    kept = run["kept"]
    printed = next((row for row in steps if kept and row["step"] == kept["iter_num"]), None)
    return {
        "stopped_by": "the budget (SIGTERM)" if run["stopped_at"] is not None else f"its max_iters (exit "
                                                                                   f"{run['status']})",
        "training_start_seconds": round(start, 2), "training_wall_seconds": round(ended - start, 2),
        "iterations": iterations, "tokens_per_iter": per_iter,
        "epochs": round(iterations * per_iter / max(train_characters, 1), 3),
        "epochs_note": "characters of its random training windows / training characters",
        "characters_per_second": round(per_iter / (median_ms / 1000), 1) if median_ms else None,
        "characters_per_second_note": "batch_size * block_size / its median printed iteration time (evaluations "
                                      "excluded)",
        "characters_per_second_with_evaluations": round(iterations * per_iter / max(ended - start, 1e-9), 1),
        "checkpoint": kept, "checkpoints": run["saves"],
        "printed": {"val_loss_at_checkpoint": printed["val_loss"] if printed else None,
                    "last_val_loss": steps[-1]["val_loss"] if steps else None,
                    "last_val_step": steps[-1]["step"] if steps else None,
                    "rule": "its estimate_loss: nats per character, mean over 20 random batches of 12 windows of "
                            "64 (not every character; context from each window's start)"},
        "history": steps}


# ---- nanoGPT's exact scores (a subprocess) ----------------------------------------------------------------------
def windows(n, block):
    """[(start, first scored position)] of the windows over n input positions (module docstring: the rule)."""
    if n <= block:
        return [(0, 0)]
    half = block // 2
    spans, start = [(0, 0)], half
    while start + block <= n:
        spans.append((start, start + half))
        start += half
    end = spans[-1][0] + block
    if end < n:
        spans.append((n - block, end))
    return spans


def score_ids(model, ids, newline_id, block, windows_per_batch=256):
    """Total nats and count of every id of `ids`, preceded by newline_id, by the window rule."""
    import torch
    import torch.nn.functional as F

    stream = torch.tensor([newline_id, *ids], dtype=torch.long)
    x, y = stream[:-1], stream[1:]
    n = len(x)
    spans, length = windows(n, block), min(n, block)
    total, scored = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(spans), windows_per_batch):
            group = spans[first:first + windows_per_batch]
            xb = torch.stack([x[start:start + length] for start, _ in group])
            yb = torch.stack([y[start:start + length] for start, _ in group])
            logits, _ = model(xb, yb)  # with targets its forward returns every position's logits
            picked = F.log_softmax(logits.float(), dim=-1).gather(-1, yb.unsqueeze(-1)).squeeze(-1)
            mask = torch.arange(length)[None, :] >= torch.tensor([s - start for start, s in group])[:, None]
            total -= float(picked[mask].double().sum())
            scored += int(mask.sum())
    if scored != n:
        raise RuntimeError(f"scored {scored} of {n} characters")
    return total, scored


def load_nanogpt(checkpoint_path, checkout):
    """(model in eval mode, checkpoint dict) from ckpt.pt through the checkout's own model.py."""
    import torch

    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(checkout) / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**checkpoint["model_args"]))
    state = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    model.load_state_dict(state)
    model.eval()
    return model, checkpoint


def score_nanogpt(checkpoint_path, checkout, texts_dir, threads, json_path):
    """Exact valid and test scores of a nanoGPT checkpoint; ids by the vocabulary of texts_dir/train.txt."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    model, checkpoint = load_nanogpt(checkpoint_path, checkout)
    chars = vocabulary(Path(texts_dir, "train.txt").read_text(encoding="utf-8"))
    stoi = {c: i for i, c in enumerate(chars)}
    if len(chars) != checkpoint["model_args"]["vocab_size"]:
        raise SystemExit(f"char_race: error: {len(chars)} training characters, its model has "
                         f"{checkpoint['model_args']['vocab_size']}")
    final = {}
    for split in ("valid", "test"):
        text = Path(texts_dir, f"{split}.txt").read_text(encoding="utf-8")
        started = time.perf_counter()
        nats, count = score_ids(model, encode(text, stoi, split).tolist(), stoi["\n"],
                                checkpoint["model_args"]["block_size"])
        if count != len(text):
            raise SystemExit(f"char_race: error: {split}: scored {count} of {len(text)} characters")
        final[split] = {"characters": count, "loss": nats / count, "bits_per_character": nats / count / math.log(2),
                        "seconds": round(time.perf_counter() - started, 2)}
    values = {"checkpoint": str(checkpoint_path), "iter_num": int(checkpoint["iter_num"]),
              "parameters": sum(p.numel() for p in model.parameters()),
              "block_size": checkpoint["model_args"]["block_size"], "vocabulary": "".join(chars),
              "threads": torch.get_num_threads(),
              "rule": "preceded by a newline, every character once; windows of block_size advancing by "
                      "block_size/2, each scoring its last block_size/2 positions (the first: all of them)",
              "final": final}
    Path(json_path).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return values


# ---- lstmlm ---------------------------------------------------------------------------------------------------
def lstmlm_commands(python, args, run_dir, files):
    """(train command, {split: evaluate command}); files: {split: Path} for --quick, else None (bundled)."""
    corpus = [item for split in SPLITS for item in (f"--{split}", str(files[split]))] if files else []
    train = [python, "-m", "lstmlm", "train", "--preset", PRESET, "--max-minutes", f"{args.minutes:g}",
             "--threads", str(args.threads), "--seed", str(args.seed), "--out", str(run_dir), "--no-report", *corpus]
    evaluate = {split: [python, "-m", "lstmlm", "evaluate", str(run_dir), "--split", split, "--json",
                        "--precision", "float32"] for split in ("valid", "test")}
    return train, evaluate


def run_json(command, log_path, threads, timeout):
    """Run a command printing JSON on stdout (stderr to log_path); returns (status, parsed or None, seconds)."""
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                  env=race.child_environment(threads), timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", None, time.perf_counter() - started
    printed = done.stdout.strip()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(printed + "\n")
    try:
        parsed = json.loads(printed.splitlines()[-1]) if printed else None
    except json.JSONDecodeError:
        parsed = None
    return done.returncode, parsed, time.perf_counter() - started


def lstmlm_side(args, python, files, out, timeout, fence):
    run_dir = out / "lstmlm-run"
    train, evaluate = lstmlm_commands(python, args, run_dir, files)
    side = {"side": "lstmlm", "commands": [race.shown(train)] + [race.shown(c) for c in evaluate.values()],
            "threads": args.threads}
    status, seconds = race.run_logged(train, out / "lstmlm-train.log", args.threads, timeout)
    side["train_process_seconds"] = round(seconds, 2)
    side["waited_for_the_other_side_seconds"] = fence.trained("lstmlm")
    if status != 0:
        return {**side, "error": f"train exited {status}", "log_tail": race.log_tail(out / "lstmlm-train.log")}
    final = {}
    for split, command in evaluate.items():
        status, result, seconds = run_json(command, out / f"lstmlm-evaluate-{split}.log", args.threads, timeout)
        if status != 0 or result is None:
            return {**side, "error": f"evaluate --split {split} exited {status}",
                    "log_tail": race.log_tail(out / f"lstmlm-evaluate-{split}.log")}
        final[split] = {"characters": result["characters"], "tokens": result["tokens"], "loss": result["loss"],
                        "bits_per_character": result["bits_per_character"], "seconds": round(result["seconds"], 2),
                        "process_seconds": round(seconds, 2)}
    return {**side, **summarise_lstmlm(run_dir), "final": final,
            "final_evaluation_seconds": round(sum(v["seconds"] for v in final.values()), 2)}


def summarise_lstmlm(run_dir):
    """Its numbers from config.json, history.csv and characters.json."""
    info = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    with open(run_dir / "history.csv", encoding="utf-8", newline="") as handle:
        history = [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                   for row in csv.DictReader(handle)]
    tokens = sum(row["train_tokens"] for row in history)
    seconds = sum(row["train_tokens"] / row["tokens_per_second"] for row in history if row["tokens_per_second"])
    best = min(history, key=lambda row: row["valid_loss"]) if history else None
    characters = json.loads((run_dir / "characters.json").read_text(encoding="utf-8"))["tokens"]
    last = history[-1] if history else {}
    return {"run_dir": str(run_dir), "precision": info.get("precision"), "parameters": info.get("parameters"),
            "threads": info.get("versions", {}).get("threads"), "torch": info.get("versions", {}).get("torch"),
            "vocabulary": "".join(sorted({"\n" if c == "<eos>" else c for c in characters} - {"<unk>"})),
            "epochs": round(tokens / info["tokens"]["train"], 3), "epochs_validated": len(history),
            "checkpoint": {"best_epoch": int(best["epoch"]) if best else None,
                           "what": "model.keras, its best-validation model (the last one it saved)"},
            "train_tokens": int(tokens), "training_wall_seconds": last.get("wall_seconds"),
            "characters_per_second": round(tokens / max(seconds, 1e-9), 1),
            "characters_per_second_note": "its history: training tokens / training seconds (validations excluded)",
            "printed": {"last_valid_bits_per_character": last.get("valid_bits_per_character"),
                        "best_valid_bits_per_character": best.get("valid_bits_per_character") if best else None,
                        "rule": "its validation during training: 10 parallel streams"},
            "history": history}


# ---- the race -------------------------------------------------------------------------------------------------
class Fence:
    """Side by side, neither side starts its final scoring before both have stopped training (so one side's
    scoring never shares the machine with the other's training). Sequential: no waiting."""

    def __init__(self, names, side_by_side):
        self.events = {name: threading.Event() for name in names}
        if not side_by_side:
            for event in self.events.values():
                event.set()

    def trained(self, name):
        """Mark `name` done training; wait for the others; returns the seconds waited."""
        started = time.perf_counter()
        self.events[name].set()
        for event in self.events.values():
            event.wait()
        return round(time.perf_counter() - started, 2)


def race_run(args, texts=None, log=print):
    """Run both sides; returns the result dict (and writes result.json and result.md under args.out)."""
    out = Path(args.out).resolve()
    if (out / "result.json").exists() or (out / "lstmlm-run").exists():
        raise SystemExit(f"char_race: error: --out {out} already holds a race; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    checkout = nanogpt_checkout(args.nanogpt_dir)
    texts = texts if texts is not None else ptb_char_texts(args.quick)
    texts_dir = out / "texts"  # the scorer reads them (its vocabulary from train.txt); --quick: lstmlm too
    files = write_texts(texts, texts_dir)
    files = files if args.quick else None  # the full text is lstmlm's bundled ptb-char
    data_dir, chars = prepare_nanogpt_data(checkout, args.dataset, texts)
    timeout = 2 * 60 * args.minutes + 1800
    result = {"corpus": {"name": "ptb-char", "quick": args.quick,
                         "source": "lstmlm's bundled ptb-char" + (" (quick slice: ptb_char_texts)" if args.quick
                                                                   else ""),
                         "characters": {split: len(text) for split, text in texts.items()},
                         "sha256": {split: sha256(text) for split, text in texts.items()},
                         "nanogpt_data": {"directory": str(data_dir), "vocabulary": "".join(chars),
                                          "note": "data files (train.bin, val.bin uint16; meta.pkl), no code"}},
              "nanogpt": provenance(checkout), "minutes": args.minutes, "threads": args.threads,
              "mode": "sequential" if args.sequential else "side by side", "preset": PRESET, "seed": args.seed,
              "note": args.note, "git_commit": race.git_commit(), "machine_at_start": race.machine(),
              "command": race.shown([python, *sys.argv])}
    log(f"char_race: {args.minutes:g} min, {args.threads} thread(s) each, {result['mode']} -> {out}")
    if not args.nanogpt_max_iters:
        copies = 1 if args.sequential else 2
        log(f"char_race: calibrating nanoGPT ({copies} at once, {args.calibration_seconds:g} s)")
        result["calibration"] = calibrate(python, checkout, args.dataset, out, args.threads,
                                          args.calibration_seconds, copies)
    started = time.perf_counter()
    sides, fence = {}, Fence(("lstmlm", "nanogpt"), not args.sequential)

    def guarded(name, function):
        try:
            sides[name] = function()
        except Exception as error:  # a side's unreadable output is that side's failure, not the race's crash
            sides[name] = {"side": name, "commands": [], "error": f"{type(error).__name__}: {error}"}
        finally:
            fence.events[name].set()  # a side that failed before its fence does not hold the other

    jobs = {"lstmlm": lambda: lstmlm_side(args, python, files, out, timeout, fence),
            "nanogpt": lambda: nanogpt_side(args, python, texts_dir, out, timeout, result.get("calibration"),
                                            fence)}
    if args.sequential:
        for name, job in jobs.items():
            guarded(name, job)
    else:
        workers = [threading.Thread(target=guarded, args=(name, job)) for name, job in jobs.items()]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    result["sides"] = {name: sides[name] for name in jobs}
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    result["machine_at_end"] = race.machine()
    result["checks"] = checks(result)
    write_results(result, out)
    return result


def checks(result):
    """Same characters scored, same vocabulary, finite numbers; and the goal: lstmlm's test bpc lower."""
    lstmlm, nanogpt = result["sides"]["lstmlm"], result["sides"]["nanogpt"]
    if "error" in lstmlm or "error" in nanogpt:
        return {"complete": False}
    counts = result["corpus"]["characters"]
    values = {"complete": True,
              "same_vocabulary": lstmlm["vocabulary"] == nanogpt["vocabulary"],
              "every_test_character_scored": lstmlm["final"]["test"]["characters"] == lstmlm["final"]["test"][
                  "tokens"] == nanogpt["final"]["test"]["characters"] == counts["test"],
              "every_valid_character_scored": lstmlm["final"]["valid"]["characters"] == lstmlm["final"]["valid"][
                  "tokens"] == nanogpt["final"]["valid"]["characters"] == counts["valid"],
              "finite": all(math.isfinite(side["final"][s]["bits_per_character"]) for side in (lstmlm, nanogpt)
                            for s in ("valid", "test"))}
    ours, theirs = lstmlm["final"]["test"]["bits_per_character"], nanogpt["final"]["test"]["bits_per_character"]
    values["lstmlm_test_lower_by_bits_per_character"] = round(theirs - ours, 4)
    values["goal_lstmlm_lower"] = ours < theirs
    return values


# ---- the report -------------------------------------------------------------------------------------------------
def _seconds(value):
    return "-" if value is None else f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def _cell(side, key):
    if "error" in side:
        return f"failed: {side['error']}"
    final = side["final"]
    if key == "test":
        return f"**{final['test']['bits_per_character']:.4f}** ({final['test']['loss']:.4f} nats)"
    if key == "valid":
        return f"{final['valid']['bits_per_character']:.4f}"
    if key == "model":
        checkpoint = side["checkpoint"]
        if side["side"] == "lstmlm":
            return f"model.keras: best validation, epoch {checkpoint['best_epoch']} of {side['epochs_validated']}"
        return (f"ckpt.pt of iter {checkpoint['iter_num']:,}, written {checkpoint['seconds_after_training_start']:.0f}"
                f" s into training")
    if key == "printed":
        printed = side["printed"]
        if side["side"] == "lstmlm":
            return f"{printed['last_valid_bits_per_character']:.4f} bpc (last validation, 10 streams)"
        loss = printed["val_loss_at_checkpoint"]
        return "-" if loss is None else f"{loss:.4f} nats = {loss / math.log(2):.4f} bpc (20 random batches)"
    if key == "amount":
        if side["side"] == "lstmlm":
            return f"{side['epochs']:.2f} epochs"
        return (f"{side['iterations']:,} iterations of {side['tokens_per_iter']} characters "
                f"({side['epochs']:.2f} epochs)")
    return {"training": _seconds(side.get("training_wall_seconds")),
            "speed": f"{side['characters_per_second']:,.0f}" if side.get("characters_per_second") else "-",
            "parameters": f"{side['parameters']:,}", "threads": str(side.get("threads")),
            "evaluation": _seconds(side.get("final_evaluation_seconds"))}[key]


def markdown(result):
    lstmlm, nanogpt = result["sides"]["lstmlm"], result["sides"]["nanogpt"]
    counts = result["corpus"]["characters"]
    budget = f"{result['minutes'] * 60:.0f}-second" if result["minutes"] < 1 else f"{result['minutes']:g}-minute"
    rows = [(f"test bits/char (exact, all {counts['test']:,} characters)", "test"),
            (f"valid bits/char (exact, all {counts['valid']:,} characters)", "valid"),
            ("model scored (the last saved within the budget)", "model"),
            ("its own validation figure during training (not exact)", "printed"),
            ("training (the budget's clock)", "training"),
            ("trained", "amount"),
            ("training characters/s (evaluations excluded)", "speed"),
            ("final valid + test scoring (outside the budget)", "evaluation"),
            ("parameters", "parameters"), ("threads", "threads")]
    commit = str(result["nanogpt"]["commit"])[:7]
    lines = [f"### PTB-char{' (quick slice)' if result['corpus']['quick'] else ''}, {budget} budget, "
             f"{result['threads']} thread(s) each, {result['mode']}", "",
             f"| | lstmlm `--preset {result['preset']}` | nanoGPT {commit} (README's CPU recipe, unmodified) |",
             "|---|---|---|"]
    lines += [f"| {label} | {_cell(lstmlm, key)} | {_cell(nanogpt, key)} |" for label, key in rows]
    checks_ = result["checks"]
    lines.append("")
    if checks_["complete"]:
        difference = checks_["lstmlm_test_lower_by_bits_per_character"]
        lines.append(f"lstmlm's test bits/char is {abs(difference):.4f} {'lower' if difference > 0 else 'higher'} "
                     f"than nanoGPT's. Checks: same vocabulary {checks_['same_vocabulary']}, every test / valid "
                     f"character scored on both sides {checks_['every_test_character_scored']} / "
                     f"{checks_['every_valid_character_scored']}, all finite {checks_['finite']}.")
    start, end = result["machine_at_start"], result["machine_at_end"]
    calibration = result.get("calibration")
    lines += ["", f"Machine: {start['cpu']}, {start['logical_cpus']} logical CPUs; load average (1/5/15 min) "
              f"{'/'.join(map(str, start['load_average']))} at the start, {'/'.join(map(str, end['load_average']))}"
              f" at the end. lstmlm commit {result['git_commit']}; nanoGPT commit {result['nanogpt']['commit']} "
              f"(unmodified: {result['nanogpt']['unmodified']})."
              + (f" nanoGPT calibration: {calibration['ms_per_iter']:.1f} ms/iteration ({calibration['copies']} "
                 f"at once) -> max_iters {nanogpt.get('max_iters')}, eval_interval {nanogpt.get('eval_interval')}."
                 if calibration else "") + (f" Note: {result['note']}" if result["note"] else ""),
              "", "Commands:", "", "```", result["command"], *lstmlm["commands"], *nanogpt["commands"], "```", ""]
    return "\n".join(lines)


def write_results(result, out):
    for name, text in (("result.json", json.dumps(result, indent=2) + "\n"), ("result.md", markdown(result))):
        write_atomically(Path(out) / name, text.encode("utf-8"))


# ---- command line -------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="lstmlm's character recipe against nanoGPT on PTB-char",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--nanogpt-dir", default=os.environ.get("LSTMLM_NANOGPT_DIR", NANOGPT_DIR),
                        help="a karpathy/nanoGPT checkout ($LSTMLM_NANOGPT_DIR)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget of each side")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of each side (0: all CPUs sequential, half side by side)")
    parser.add_argument("--sequential", action="store_true", help="one side after the other")
    parser.add_argument("--seed", type=int, default=1, help="lstmlm's seed (nanoGPT's train.py fixes its own)")
    parser.add_argument("--calibration-seconds", type=float, default=None,
                        help="nanoGPT's calibration run (default 30, --quick 5)")
    parser.add_argument("--nanogpt-max-iters", type=int, default=0,
                        help="nanoGPT's max_iters instead of a calibration (eval_interval = it / 15)")
    parser.add_argument("--nanogpt-always-save", action="store_true",
                        help="pass --always_save_checkpoint=True (its config's False: it saves when its estimated "
                             "val loss improves)")
    parser.add_argument("--note", default="", help="free text for the report")
    parser.add_argument("--out", help="result directory (default runs/race/ptb-char-Mmin-Tt-MODE)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: a PTB-char slice, {QUICK_MINUTES * 60:.0f}-second budgets")
    parser.add_argument("--score-nanogpt", metavar="CKPT", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes = QUICK_MINUTES
        if args.out is None:
            args.out = tempfile.mkdtemp(prefix="lstmlm-char-race-quick-")
    if args.calibration_seconds is None:
        args.calibration_seconds = 5.0 if args.quick else 30.0
    args.dataset = "ptb_char_quick" if args.quick else "ptb_char"
    if args.threads <= 0:
        cpus = os.cpu_count() or 1
        args.threads = cpus if args.sequential else max(1, cpus // 2)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if not args.score_nanogpt:
        nanogpt_checkout(args.nanogpt_dir)  # fail before anything is written
    if args.out is None:
        args.out = (f"runs/race/ptb-char-{args.minutes:g}min-{args.threads}t-"
                    f"{'sequential' if args.sequential else 'parallel'}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.score_nanogpt:
        score_nanogpt(args.score_nanogpt, args.nanogpt_dir, args.texts, args.threads, args.json)
        return 0
    result = race_run(args)
    print((Path(args.out) / "result.md").read_text(encoding="utf-8"))
    print(f"written: {Path(args.out) / 'result.json'}, {Path(args.out) / 'result.md'}")
    checks_ = result["checks"]
    fair = checks_["complete"] and all(value for key, value in checks_.items()
                                       if isinstance(value, bool) and not key.startswith("goal"))
    return 0 if fair else 1


if __name__ == "__main__":
    sys.exit(main())
