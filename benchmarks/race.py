#!/usr/bin/env python
"""The race: lstmlm's best recipe against pytorch/examples' word_language_model, same budget, same threads.

    P=--peer-dir=/work/peers/pytorch-examples       # a pytorch/examples checkout (docs/race.md, "The real peer")
    python benchmarks/race.py $P --corpus ptb --minutes 60 --threads 2 --sequential     # each side has the machine
    python benchmarks/race.py $P --corpus ptb --minutes 15 --threads 1                  # both at the same time
    python benchmarks/race.py $P --corpus wikitext-2 --minutes 15 --threads 2 --sequential
    python benchmarks/race.py $P --corpus-dir /work/ladder/ptb-0.1m --minutes 15 --threads 1 --preset auto
    python benchmarks/race.py $P --quick          # ~1 minute smoke run: a slice of PTB, 20-second budgets

--corpus-dir DIR races on any corpus in pytorch/examples' layout (DIR/train.txt, valid.txt, test.txt; e.g. a
rung of the corpus ladder, benchmarks/ladder.py); the corpus is named after DIR.

Each side runs as its own subprocess with the same torch thread count and the same wall-clock budget:
  - lstmlm: `python -m lstmlm train --preset P --max-minutes M --threads T --no-report ...`, then lstmlm's own
    exact evaluation (`lstmlm.load(RUN).evaluate(split)`, what `lstmlm evaluate RUN --split S` prints) of the
    best-validation model.keras on valid and test, in a second subprocess (`race.py --evaluate-lstmlm RUN`).
  - the peer (`--peer real`, the default): the real program, `DIR/word_language_model/main.py --tied`,
    unmodified, on the same files, stopped at the budget by SIGINT (its Ctrl-C); its own printed test
    perplexity and the exact one of its ONNX export (benchmarks/real_peer.py says how and why).
  - the fallback (`--peer reimplementation`): benchmarks/peer_word_language_model.py, a plain-PyTorch
    re-implementation of that recipe (2x200 tied, dropout 0.2, SGD 20, clip 0.25, lr / 4 when validation
    stalls) with lstmlm's ids, which evaluates its best model the same exact way. The races before issue 19 ran it.
Both budgets start when training starts (after reading the corpus) and cover training plus the validations
during it; the final valid + test evaluation comes after and is timed separately. Both final reports are exact:
the split as one stream at batch 1, state carried, preceded by `<eos>`, every token counted; the vocabulary and
ids come from lstmlm's corpus code on both sides (the result checks that the two vocabularies are identical).

Side by side (the default) both run at once, T threads each; the side that finishes training first evaluates
while the other may still be in its last seconds. `--sequential` runs lstmlm, then the peer.
Output (--out, default runs/race/CORPUS-Mmin-Tt-MODE/): result.json, result.md (docs/race.md's format), the
lstmlm run directory, peer.json and each subprocess' log.
"""

import argparse
import csv
import gzip
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_peer  # noqa: E402

PEER = HERE / "peer_word_language_model.py"  # the re-implementation (--peer reimplementation)
PEER_KINDS = {"real": "real program", "reimplementation": "re-implementation"}
WIKITEXT_DIR = Path("/work/shared/data/wikitext-2")
QUICK_LINES = {"train": 1500, "valid": 150, "test": 150}  # of bundled PTB: ~33k / 3.7k / 3.2k tokens
QUICK_MINUTES = 1 / 3  # 20 seconds
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni"]


# ---- corpus -------------------------------------------------------------------------------------------------
def bundled_ptb_path(split):
    """The gzipped PTB split inside the lstmlm package (found without importing lstmlm, so without Keras)."""
    spec = importlib.util.find_spec("lstmlm")
    if spec is None or spec.origin is None:
        raise SystemExit("race: error: lstmlm is not importable (install it or set PYTHONPATH=src)")
    return Path(spec.origin).parent / "data" / "ptb" / f"ptb.{split}.txt.gz"


def write_quick_corpus(directory):
    """The first lines of bundled PTB's splits as a tiny file corpus; returns {split: Path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in QUICK_LINES.items():
        lines = gzip.decompress(bundled_ptb_path(split).read_bytes()).decode("utf-8").splitlines(keepends=True)
        paths[split] = directory / f"quick.{split}.txt"
        paths[split].write_text("".join(lines[:count]), encoding="utf-8")
    return paths


def wikitext_paths(directory, flag="--wikitext-dir"):
    """{split: Path} of a corpus in pytorch/examples' names (WikiText-2's), or a one-line error naming what is
    missing."""
    paths = {split: Path(directory) / f"{split}.txt" for split in ("train", "valid", "test")}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise SystemExit(f"race: error: {flag} {directory}: missing {', '.join(missing)}")
    return paths


def split_tokens(path):
    """Tokens lstmlm scores in a text file: its words plus one `<eos>` per line (the leading `<eos>` predicts
    the first word; the last line's `<eos>` is the last target)."""
    text = Path(path).read_text(encoding="utf-8")
    return len(text.split()) + text.count("\n")


def vocabulary_flag():
    """The installed lstmlm's flag for a vocabulary of every training word: `--max-vocabulary-size 0` (issue 11),
    or the older `--max-vocab 100000` (above WikiText-2's 33,278 types).

    `lstmlm train`'s flags are its Config fields (cli.add_train makes one per field), so the fields say which one
    it accepts. Read in this process, which imports the same lstmlm as its subprocesses (same sys.path); that
    costs one Keras import here, before any budget starts, instead of a `lstmlm train --help` subprocess.
    """
    import dataclasses

    from lstmlm.config import Config

    fields = {field.name for field in dataclasses.fields(Config)}
    if "max_vocabulary_size" in fields:
        return ["--max-vocabulary-size", "0"]
    if "max_vocab" in fields:
        return ["--max-vocab", "100000"]
    raise SystemExit("race: error: lstmlm's Config has neither max_vocabulary_size nor max_vocab")


# ---- machine ------------------------------------------------------------------------------------------------
def machine():
    """CPU model, the flags that decide LSTM speed, logical CPUs, load average (shared machines show here)."""
    from lstmlm.machine import cpu_info

    info = cpu_info()
    model, flags = info["model"], set(info["flags"])
    return {"cpu": model, "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "logical_cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
            "python": platform.python_version()}


def git_commit():
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain"], capture_output=True, text=True,
                               check=True).stdout.strip()
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# ---- the two sides ------------------------------------------------------------------------------------------
def child_environment(threads):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("KERAS_BACKEND", "torch")
    return env


def run_logged(command, log_path, threads, timeout):
    """Run a command with its stdout and stderr in log_path; returns (exit status, wall seconds)."""
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        try:
            status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_environment(threads),
                                    timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\nrace: killed after the {timeout:.0f}-second safety timeout\n")
            status = "timeout"
    return status, time.perf_counter() - started


def log_tail(path, lines=15):
    return "".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])


def shown(command):
    """A command as a reader would type it: `python` for this interpreter, paths relative to the current one."""
    here = Path.cwd()

    def readable(part):
        if part == sys.executable:
            return "python"
        if part.startswith("/") and Path(part).is_relative_to(here):
            return str(Path(part).relative_to(here))
        return part

    return shlex.join([readable(part) for part in command])


def lstmlm_side(args, python, corpus_flags, out, timeout):
    run_dir = out / "lstmlm-run"
    train = [python, "-m", "lstmlm", "train", "--preset", args.preset, "--max-minutes", f"{args.minutes:g}",
             "--threads", str(args.threads), "--seed", str(args.seed), "--out", str(run_dir), "--no-report",
             *corpus_flags, *shlex.split(args.lstmlm_args)]
    evaluate = [python, str(Path(__file__).resolve()), "--evaluate-lstmlm", str(run_dir), "--threads",
                str(args.threads), "--json", str(out / "lstmlm-evaluation.json")]
    side = {"side": "lstmlm", "commands": [shown(train), shown(evaluate)],
            "equivalent_evaluation": [f"lstmlm evaluate {run_dir} --split valid",
                                      f"lstmlm evaluate {run_dir} --split test"]}
    status, seconds = run_logged(train, out / "lstmlm-train.log", args.threads, timeout)
    side["train_process_seconds"] = round(seconds, 2)
    if status != 0:
        return {**side, "error": f"train exited {status}", "log_tail": log_tail(out / "lstmlm-train.log")}
    status, seconds = run_logged(evaluate, out / "lstmlm-evaluate.log", args.threads, timeout)
    side["evaluate_process_seconds"] = round(seconds, 2)
    if status != 0:
        return {**side, "error": f"evaluation exited {status}", "log_tail": log_tail(out / "lstmlm-evaluate.log")}
    return {**side, **summarise_lstmlm(run_dir, json.loads((out / "lstmlm-evaluation.json").read_text()))}


def summarise_lstmlm(run_dir, evaluation):
    """The race's numbers from an lstmlm run directory and its final evaluation."""
    info = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    with open(run_dir / "history.csv", encoding="utf-8", newline="") as handle:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    words = [line.split("\t", 1)[0] for line in (run_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()]
    tokens = sum(row["train_tokens"] for row in history)
    seconds = sum(row["train_tokens"] / row["tokens_per_second"] for row in history if row["tokens_per_second"])
    best = min(history, key=lambda row: row["valid_loss"]) if history else None
    return {
        "run_dir": str(run_dir), "precision": info.get("precision"), "parameters": info.get("parameters"),
        "threads": info.get("versions", {}).get("threads"), "torch": info.get("versions", {}).get("torch"),
        "vocabulary_size": len(words), "vocabulary_sha256": vocabulary_sha256(words),
        "vocabulary_set_sha256": real_peer.set_sha256(words),
        "tokens": info.get("tokens"), "budget_seconds": 60.0 * info["config"]["max_minutes"],
        "epochs": round(tokens / info["tokens"]["train"], 3), "epochs_validated": len(history),
        "best_epoch": int(best["epoch"]) if best else None, "train_tokens": int(tokens),
        "train_seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
        "training_wall_seconds": history[-1]["wall_seconds"] if history else None,
        "history": history, "final": evaluation["final"],
        "final_evaluation_seconds": round(sum(v["seconds"] for v in evaluation["final"].values()), 2)}


def reimplementation_side(args, python, peer_flags, out, timeout):
    command = [python, str(PEER), "--max-minutes", f"{args.minutes:g}", "--threads", str(args.threads), "--seed",
               str(args.seed), "--json", str(out / "peer.json"), *peer_flags, *shlex.split(args.peer_args)]
    side = {"side": "peer", "kind": PEER_KINDS["reimplementation"], "commands": [shown(command)]}
    status, seconds = run_logged(command, out / "peer.log", args.threads, timeout)
    side["process_seconds"] = round(seconds, 2)
    if status != 0:
        return {**side, "error": f"peer exited {status}", "log_tail": log_tail(out / "peer.log")}
    return {**side, **json.loads((out / "peer.json").read_text(encoding="utf-8"))}


def vocabulary_sha256(words):
    import hashlib

    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


# ---- lstmlm's final evaluation (a subprocess of the race) ---------------------------------------------------
def evaluate_lstmlm(run_dir, threads, json_path):
    """Exact valid and test perplexity of a run's model.keras through lstmlm's public API; writes JSON."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    import lstmlm

    started = time.perf_counter()
    model = lstmlm.load(run_dir)
    load_seconds = time.perf_counter() - started
    final = {}
    for split in ("valid", "test"):
        result = model.evaluate(split=split)
        final[split] = {key: result[key] for key in ("tokens", "loss", "perplexity", "accuracy", "seconds")}
    values = {"run_dir": str(run_dir), "threads": torch.get_num_threads(), "load_seconds": round(load_seconds, 2),
              "final": final}
    path = Path(json_path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return values


# ---- the race -----------------------------------------------------------------------------------------------
def race(args, log=print):
    """Run both sides; returns the result dict (and writes result.json and result.md under args.out)."""
    out = Path(args.out)
    if (out / "result.json").exists() or (out / "lstmlm-run").exists():
        raise SystemExit(f"race: error: --out {out} already holds a race; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    corpus = {"name": args.corpus}
    if args.corpus == "ptb" and not getattr(args, "corpus_dir", None):
        lstmlm_flags, peer_flags = [], []  # bundled; its 10,000 types are all under lstmlm's default cap
        corpus["source"] = "lstmlm's bundled PTB (Mikolov's simple-examples)"
        paths = {split: bundled_ptb_path(split) for split in ("train", "valid", "test")}
    else:
        if args.corpus == "quick":
            paths = write_quick_corpus(out / "quick-corpus")
            corpus["source"] = (f"the first {QUICK_LINES['train']} / {QUICK_LINES['valid']} / "
                                f"{QUICK_LINES['test']} lines of bundled PTB's train / valid / test")
        elif getattr(args, "corpus_dir", None):
            paths = wikitext_paths(args.corpus_dir, "--corpus-dir")
            corpus["source"] = str(args.corpus_dir)
            manifest = Path(args.corpus_dir) / "ladder.json"  # a ladder rung says what it is cut from
            if manifest.is_file():
                corpus["ladder"] = json.loads(manifest.read_text(encoding="utf-8"))
        else:
            paths = wikitext_paths(args.wikitext_dir)
            corpus["source"] = str(args.wikitext_dir)
        files = [item for split in ("train", "valid", "test") for item in (f"--{split}", str(paths[split]))]
        lstmlm_flags = files + vocabulary_flag()
        peer_flags = files + ["--max-vocabulary-size", "0"]
        corpus["test_tokens_expected"] = split_tokens(paths["test"])
    timeout = 2 * 60 * args.minutes + 1800
    peer = {"kind": PEER_KINDS[args.peer]}
    if args.peer == "real":
        peer.update(real_peer.provenance(args.peer_dir))
    result = {"corpus": corpus, "peer": peer, "minutes": args.minutes, "threads": args.threads,
              "mode": "sequential" if args.sequential else "side by side", "preset": args.preset,
              "seed": args.seed, "quick": args.corpus == "quick", "note": args.note, "git_commit": git_commit(),
              "machine_at_start": machine(), "command": shown([python, *sys.argv])}
    log(f"race: {args.corpus}, {args.minutes:g} min, {args.threads} thread(s) each, {result['mode']} -> {out}")
    started = time.perf_counter()
    sides = {}
    def guarded(side, function, flags):
        try:
            return function(args, python, flags, out, timeout)
        except Exception as error:  # a side's unreadable output is that side's failure, not the race's crash
            return {"side": side, "commands": [], "error": f"{type(error).__name__}: {error}"}

    def real(args, python, flags, out, timeout):
        return real_peer.side(args, python, paths, out, timeout, child_environment(args.threads), split_tokens,
                              [python, str(HERE / "real_peer.py")])

    jobs = {"lstmlm": lambda: guarded("lstmlm", lstmlm_side, lstmlm_flags),
            "peer": lambda: guarded("peer", real if args.peer == "real" else reimplementation_side, peer_flags)}
    if args.sequential:
        for name, job in jobs.items():
            sides[name] = job()
    else:
        threads = [threading.Thread(target=lambda n=name, j=job: sides.__setitem__(n, j())) for name, job in
                   jobs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    result["sides"] = sides
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    result["machine_at_end"] = machine()
    result["checks"] = checks(result)
    write_results(result, out)
    return result


def checks(result):
    """What must hold for the comparison to be fair: same vocabulary, same token counts, finite numbers."""
    lstmlm, peer = result["sides"]["lstmlm"], result["sides"]["peer"]
    if "error" in lstmlm or "error" in peer:
        return {"complete": False}
    if peer.get("kind") == PEER_KINDS["real"]:  # its own ids (same words, other numbers): compare the word sets
        same_vocabulary = lstmlm["vocabulary_set_sha256"] == peer["vocabulary_set_sha256"]
    else:
        same_vocabulary = lstmlm["vocabulary_sha256"] == peer["vocabulary_sha256"]
    values = {"complete": True, "same_vocabulary": same_vocabulary,
              "same_evaluation_rule": all(peer["final"][s].get("exact", True) for s in ("valid", "test")),
              "same_test_tokens": lstmlm["final"]["test"]["tokens"] == peer["final"]["test"]["tokens"],
              "same_valid_tokens": lstmlm["final"]["valid"]["tokens"] == peer["final"]["valid"]["tokens"],
              "finite": all(math.isfinite(side["final"][s]["perplexity"]) for side in (lstmlm, peer)
                            for s in ("valid", "test"))}
    expected = result["corpus"].get("test_tokens_expected")
    if expected is not None:
        values["test_tokens_as_counted_from_the_file"] = lstmlm["final"]["test"]["tokens"] == expected
    lstmlm_test, peer_test = lstmlm["final"]["test"]["perplexity"], peer["final"]["test"]["perplexity"]
    values["lstmlm_test_lower_by_percent"] = round(100 * (peer_test - lstmlm_test) / peer_test, 2)
    if "printed" in peer:  # the real program's own figure, by its own rule
        printed = peer["printed"]["test"]["perplexity"]
        values["lstmlm_test_lower_than_its_printed_by_percent"] = round(100 * (printed - lstmlm_test) / printed, 2)
    return values


# ---- the report ---------------------------------------------------------------------------------------------
CORPUS_NAMES = {"ptb": "PTB", "wikitext-2": "WikiText-2", "quick": "quick (PTB slice)"}


def budget_label(minutes, unit_words=False):
    """15 -> '15 min' / '15-minute'; 1/3 -> '20 s' / '20-second'."""
    if minutes < 1:
        return f"{minutes * 60:.0f}-second" if unit_words else f"{minutes * 60:.0f} s"
    return f"{minutes:g}-minute" if unit_words else f"{minutes:g} min"


def _minutes(seconds):
    return "-" if seconds is None else f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def _count(value):
    return "-" if value is None else f"{value:,.0f}"


def _cell(side, key):
    if "error" in side:
        return f"failed: {side['error']}"
    final = side["final"]
    return {
        "valid": f"{final['valid']['perplexity']:.2f}",
        "test": f"**{final['test']['perplexity']:.2f}**",
        "epochs": f"{side['epochs']:.2f} ({side['epochs_validated']} validations, best: {side['best_epoch']})",
        "speed": f"{_count(side['tokens_per_second'])} ({side.get('precision', 'float32')})",
        "training": _minutes(side["training_wall_seconds"]),
        "evaluation": _minutes(side["final_evaluation_seconds"]),
        "process": _minutes(side.get("process_seconds",
                                     (side.get("train_process_seconds") or 0) + (side.get("evaluate_process_seconds")
                                                                                  or 0))),
        "parameters": f"{side['parameters']:,}",
        "threads": str(side.get("threads")),
    }[key]


def summary_row(result):
    """One row of docs/race.md's results table."""
    lstmlm, peer, checks_ = result["sides"]["lstmlm"], result["sides"]["peer"], result["checks"]
    if not checks_["complete"]:
        return (f"| {CORPUS_NAMES[result['corpus']['name']]} | {budget_label(result['minutes'])} | "
                f"{result['threads']} | {result['mode']} | failed | failed | | | |")

    def pair(side):
        return f"{side['final']['valid']['perplexity']:.2f} / {side['final']['test']['perplexity']:.2f}"

    return (f"| {CORPUS_NAMES[result['corpus']['name']]} | {budget_label(result['minutes'])} | "
            f"{result['threads']} | {result['mode']} | {pair(lstmlm)} | {pair(peer)} | "
            f"{checks_['lstmlm_test_lower_by_percent']:+.1f}% | "
            f"{lstmlm['epochs']:.2f} / {peer['epochs']:.2f} | {_count(lstmlm['tokens_per_second'])} / "
            f"{_count(peer['tokens_per_second'])} |")


SUMMARY_HEADER = ("| corpus | budget | threads each | mode | lstmlm valid / test | peer valid / test | "
                  "lstmlm's test lower by | epochs lstmlm / peer | training tok/s lstmlm / peer |\n"
                  "|---|---|---|---|---|---|---|---|---|")


def peer_label(result):
    """Which peer ran: the real program at a commit, or the re-implementation (every race before issue 19)."""
    peer = result.get("peer", {"kind": PEER_KINDS["reimplementation"]})
    if peer["kind"] == PEER_KINDS["real"]:
        return f"pytorch/examples word_language_model `main.py --tied`, unmodified, commit {str(peer['commit'])[:7]}"
    return "benchmarks/peer_word_language_model.py, a re-implementation of the pytorch/examples recipe"


def markdown(result):
    lstmlm, peer = result["sides"]["lstmlm"], result["sides"]["peer"]
    corpus = CORPUS_NAMES[result["corpus"]["name"]]
    tokens = {split: lstmlm.get("final", peer.get("final", {})).get(split, {}).get("tokens") for split in
              ("valid", "test")}

    def count(split):
        return f"{tokens[split]:,} tokens" if tokens[split] else "every token"

    rows = [
        ("valid perplexity (exact: batch 1, state carried, " + count("valid") + ")", "valid"),
        ("test perplexity (exact, " + count("test") + ")", "test"),
        ("epochs (training tokens / train split; validations; best)", "epochs"),
        ("training tokens/s (validation excluded)", "speed"),
        ("training + validations (the budget's clock)", "training"),
        ("final valid + test evaluation (outside the budget)", "evaluation"),
        ("whole side, wall (start-up, corpus reading, saving included)", "process"),
        ("parameters", "parameters"),
        ("torch threads (as the process reported)", "threads"),
    ]
    lines = [f"### {corpus}, {budget_label(result['minutes'], True)} budget, {result['threads']} thread(s) each, "
             f"{result['mode']}", "",
             f"| | lstmlm `--preset {result['preset']}` | peer: {peer_label(result)} |",
             "|---|---|---|"]
    lines += [f"| {label} | {_cell(lstmlm, key)} | {_cell(peer, key)} |" for label, key in rows]
    if "printed" in peer:
        printed = peer["printed"]["test"]
        lines.append(f"| test perplexity as the program printed it ({printed['tokens']:,} tokens on 10 streams, "
                     f"its rule) | | {printed['perplexity']:.2f} |")
    checks_ = result["checks"]
    lines.append("")
    if checks_["complete"]:
        lines.append(f"lstmlm's test perplexity is {abs(checks_['lstmlm_test_lower_by_percent']):.1f}% "
                     f"{'lower' if checks_['lstmlm_test_lower_by_percent'] >= 0 else 'higher'} than the peer's. "
                     f"Checks: same vocabulary {checks_['same_vocabulary']}, same valid/test token counts "
                     f"{checks_['same_valid_tokens'] and checks_['same_test_tokens']}, all finite "
                     f"{checks_['finite']}.")
    start, end = result["machine_at_start"], result["machine_at_end"]
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in start["cpu_flags"].items())
    lines += [
        "",
        f"Machine: {start['cpu']}, {start['logical_cpus']} logical CPUs ({flags}); load average (1/5/15 min) "
        f"{'/'.join(map(str, start['load_average']))} at the start, {'/'.join(map(str, end['load_average']))} at "
        f"the end. Corpus: {result['corpus']['source']}. Seed {result['seed']}. Whole race: "
        f"{_minutes(result['wall_seconds'])}. Commit: {result['git_commit']}."
        + (f" Note: {result['note']}" if result["note"] else ""),
        "", "Commands:", "", "```", result["command"]]
    for side in (lstmlm, peer):
        lines += side["commands"]
    lines += ["```", "", SUMMARY_HEADER, summary_row(result), ""]
    return "\n".join(lines)


def write_results(result, out):
    for name, text in (("result.json", json.dumps(result, indent=2) + "\n"), ("result.md", markdown(result))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out / name)


# ---- command line -------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="lstmlm against the pytorch/examples recipe at the same budget",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", choices=["ptb", "wikitext-2"], default="ptb")
    parser.add_argument("--wikitext-dir", default=str(WIKITEXT_DIR), help="train.txt, valid.txt, test.txt")
    parser.add_argument("--corpus-dir", help="any corpus as DIR/train.txt, valid.txt, test.txt (replaces --corpus; "
                                             "named after DIR)")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each side")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of each side (0: all CPUs sequential, half side by side)")
    parser.add_argument("--sequential", action="store_true", help="one side after the other, not at the same time")
    parser.add_argument("--preset", default="speedrun", help="lstmlm's preset")
    parser.add_argument("--seed", type=int, default=1, help="both sides' seed")
    parser.add_argument("--lstmlm-args", default="", help="more `lstmlm train` flags (one string)")
    parser.add_argument("--peer", choices=sorted(PEER_KINDS), default=None,
                        help="real: the pytorch/examples program in --peer-dir (the default when one is given); "
                             "reimplementation: benchmarks/peer_word_language_model.py, the fallback")
    parser.add_argument("--peer-dir", default=os.environ.get("LSTMLM_PEER_DIR"),
                        help="a pytorch/examples checkout, or its word_language_model directory ($LSTMLM_PEER_DIR)")
    parser.add_argument("--peer-args", default="",
                        help="more peer flags (one string), e.g. '--epochs 100' (real) or '--partial-epoch discard' "
                             "(reimplementation)")
    parser.add_argument("--note", default="", help="free text for the report, e.g. what else ran on the machine")
    parser.add_argument("--out", help="result directory (default runs/race/CORPUS-Mmin-Tt-MODE)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: a PTB slice written to a temp dir, {QUICK_MINUTES * 60:.0f}-second budgets")
    parser.add_argument("--evaluate-lstmlm", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.corpus, args.minutes, args.corpus_dir = "quick", QUICK_MINUTES, None
        if args.out is None:
            args.out = tempfile.mkdtemp(prefix="lstmlm-race-quick-")
    elif args.corpus_dir and not args.evaluate_lstmlm:
        wikitext_paths(args.corpus_dir, "--corpus-dir")  # fail before anything is written
        args.corpus = Path(args.corpus_dir).resolve().name
    if args.threads <= 0:
        cpus = os.cpu_count() or 1
        args.threads = cpus if args.sequential else max(1, cpus // 2)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.peer is None and not args.evaluate_lstmlm:
        if not args.peer_dir:
            parser.error("the peer is the real pytorch/examples program: pass --peer-dir DIR (docs/race.md, "
                         "'The real peer'), or --peer reimplementation for the fallback")
        args.peer = "real"
    if args.peer == "real":
        real_peer.program_directory(args.peer_dir or ".")  # fail before anything is written
    if args.corpus == "wikitext-2" and not args.corpus_dir and not args.evaluate_lstmlm:
        wikitext_paths(args.wikitext_dir)  # fail before anything is written
    if args.out is None:
        args.out = (f"runs/race/{args.corpus}-{args.minutes:g}min-{args.threads}t-"
                    f"{'sequential' if args.sequential else 'parallel'}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.evaluate_lstmlm:
        evaluate_lstmlm(Path(args.evaluate_lstmlm), args.threads, args.json)
        return 0
    result = race(args)
    print((Path(args.out) / "result.md").read_text(encoding="utf-8"))
    print(f"written: {Path(args.out) / 'result.json'}, {Path(args.out) / 'result.md'}")
    checks_ = result["checks"]
    fair = checks_["complete"] and all(value for key, value in checks_.items() if isinstance(value, bool))
    return 0 if fair else 1


if __name__ == "__main__":
    sys.exit(main())
