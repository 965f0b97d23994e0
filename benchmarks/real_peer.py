"""The race's peer as users run it: pytorch/examples' `word_language_model/main.py --tied`, unmodified, by path.

race.py calls `side(...)`; `python benchmarks/real_peer.py --score ...` is its exact-scoring subprocess.

How it runs (docs/race.md, "The real peer"):
  - Files: a data directory with train.txt / valid.txt / test.txt, the program's names: symlinks to the files
    lstmlm trains on, or, for lstmlm's bundled (gzipped) PTB, decompressed copies, byte for byte the same text.
  - Command: `python DIR/word_language_model/main.py --data D --tied --seed S --save peer-model.pt
    --onnx-export peer-model.onnx [--peer-args]`; threads through OMP_NUM_THREADS / MKL_NUM_THREADS (the program
    sets none itself), PYTHONUNBUFFERED=1 so its lines arrive when printed.
  - Budget: the program has no clock. Its budget starts when its training starts, taken from its first epoch-1
    line (arrival time minus the elapsed time it prints; until that line arrives the deadline counts from the
    process start). At the deadline it gets SIGINT, the Ctrl-C its README documents: it stops, throws the partial
    epoch away, reloads its best-validation model.pt, evaluates test and prints `| End of training | test loss
    L | test ppl P`. A signal, not a chosen --epochs, because no epoch count fits a wall-clock budget on every
    machine. Its own `--epochs 40` limit stays; if it gets there first it stops by itself (recorded).
    SIGINT is held back for 0.25 s after an end-of-epoch line, while it may be writing model.pt (at most 5 s).
  - Scores: its own printed test perplexity (10 parallel streams from a zero state, the split trimmed to a
    multiple of 10), and the exact one by lstmlm's rules (one stream at batch 1, state carried, preceded by
    `<eos>`, every token) computed from the ONNX file it exports of its best model: a protobuf, read with
    onnxruntime. Its model.pt is a pickled nn.Module and is never loaded here (unpickling runs code).
"""

import argparse
import hashlib
import importlib.util
import json
import math
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HOLD_AFTER_EPOCH_SECONDS = 0.25  # its model.pt (8 MB on PTB, 27 MB on WikiText-2) is written by then
MAX_HOLD_SECONDS = 5.0  # epochs shorter than the hold (tiny corpora) must not postpone the signal for ever
# git blob ids of the three files at the commit the races were prepared with: `unmodified` checks them.
KNOWN_BLOBS = {"77f55b912142e11fcfdf5b530231fb9c52f181e8": {
    "main.py": "581b17cecd7d8008387c89f8e4b708dd33d88d01", "data.py": "a2f2249382b9eb094bb55c931ea68220e9a384fc",
    "model.py": "94d773bd1e931f48d6e4cd82916e26987f2f096c"}}
PROGRESS = re.compile(r"\| epoch\s+(\d+) \|\s*(\d+)/\s*(\d+) batches \| lr\s+([\d.e+-]+) \| ms/batch\s+([\d.]+) \|")
EPOCH_END = re.compile(r"\| end of epoch\s+(\d+) \| time:\s*([\d.]+)s \| valid loss\s+([\d.]+) \| valid ppl\s+([\d.]+)")
TEST = re.compile(r"\| End of training \| test loss\s+([\d.]+) \| test ppl\s+([\d.]+)")


# ---- the program ---------------------------------------------------------------------------------------------
def program_directory(peer_dir):
    """The word_language_model directory under --peer-dir (a pytorch/examples checkout, or that directory)."""
    for candidate in (Path(peer_dir) / "word_language_model", Path(peer_dir)):
        if (candidate / "main.py").is_file() and (candidate / "data.py").is_file():
            return candidate.resolve()
    raise SystemExit(f"race: error: --peer-dir {peer_dir}: no word_language_model/main.py (fetch pytorch/examples: "
                     "docs/race.md, 'The real peer')")


def git_blob(path):
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def provenance(peer_dir):
    """Which program ran: its directory, commit (git, else a COMMIT file beside it) and the files' blob ids."""
    program = program_directory(peer_dir)
    commit, source = None, None
    try:
        commit = subprocess.run(["git", "-C", str(program), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        source = "git"
    except (OSError, subprocess.CalledProcessError):
        for candidate in (program / "COMMIT", program.parent / "COMMIT"):
            if candidate.is_file():
                commit, source = candidate.read_text().strip(), f"{candidate.name} file (written at checkout)"
                break
    blobs = {name: git_blob(program / name) for name in ("main.py", "data.py", "model.py")}
    known = KNOWN_BLOBS.get(commit)
    return {"directory": str(program), "commit": commit, "commit_source": source, "blobs": blobs,
            "unmodified": None if known is None else known == blobs,
            "repository": "https://github.com/pytorch/examples"}


def prepare_data(paths, directory):
    """{split: Path} text files -> a directory of train.txt / valid.txt / test.txt (symlinks; .gz decompressed)."""
    import gzip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, path in paths.items():
        target = directory / f"{split}.txt"
        if str(path).endswith(".gz"):
            target.write_bytes(gzip.decompress(Path(path).read_bytes()))
        else:
            target.symlink_to(Path(path).resolve())
    return directory


def vocabulary(data_dir):
    """The program's vocabulary by its data.py rule: every word of the three files, plus `<eos>`."""
    words = {"<eos>"}
    for split in ("train", "valid", "test"):
        words.update((Path(data_dir) / f"{split}.txt").read_text(encoding="utf-8").split())
    return words


def set_sha256(words):
    return hashlib.sha256("\n".join(sorted(words)).encode("utf-8")).hexdigest()


def recipe(peer_args):
    """The recipe values that size the model and its batches: the program's defaults, or what --peer-args set."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag, default in (("--emsize", 200), ("--nhid", 200), ("--nlayers", 2), ("--batch_size", 20),
                          ("--bptt", 35), ("--epochs", 40)):
        parser.add_argument(flag, type=int, default=default)
    return vars(parser.parse_known_args(shlex.split(peer_args))[0])


# ---- running it under a budget -------------------------------------------------------------------------------
def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_with_budget(command, cwd, env, budget_seconds, log_path, timeout):
    """Run the program, SIGINT at the budget (see the module docstring); returns what happened when."""
    started = time.monotonic()
    state = {"training_started": None, "last_epoch_end": None, "lines": []}
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        # SIGINT back to its default in the child: a race started in the background (`&`, nohup) has SIGINT
        # ignored, the child would inherit that, and Python installs its KeyboardInterrupt handler only where
        # SIGINT is not ignored: the budget's Ctrl-C would then be lost and the program would run on.
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, preexec_fn=_default_sigint)

        def read():
            for line in process.stdout:
                now = time.monotonic() - started
                log.write(line)
                log.flush()
                state["lines"].append((now, line.rstrip("\n")))
                progress, end = PROGRESS.search(line), EPOCH_END.search(line)
                if state["training_started"] is None and progress and progress.group(1) == "1":
                    state["training_started"] = now - int(progress.group(2)) * float(progress.group(5)) / 1000
                if end:
                    if state["training_started"] is None and end.group(1) == "1":
                        state["training_started"] = now - float(end.group(2))
                    state["last_epoch_end"] = now

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        interrupted_at, status = None, None
        while process.poll() is None:
            now = time.monotonic() - started
            deadline = (state["training_started"] or 0.0) + budget_seconds
            saving = state["last_epoch_end"] is not None and now - state["last_epoch_end"] < HOLD_AFTER_EPOCH_SECONDS
            if interrupted_at is None and now >= deadline and (not saving or now >= deadline + MAX_HOLD_SECONDS):
                process.send_signal(signal.SIGINT)
                interrupted_at = now
            if now > timeout:
                process.kill()
                status = "timeout"
            time.sleep(0.05)
        reader.join(timeout=10)
        if status is None:
            status = process.returncode
    return {"status": status, "process_seconds": time.monotonic() - started, "interrupted_at": interrupted_at,
            **state}


def parse(lines):
    """The program's printed numbers: per-epoch validation, progress (ms/batch), test."""
    epochs, progress, test, early = [], [], None, False
    for _, line in lines:
        if match := EPOCH_END.search(line):
            epochs.append({"epoch": int(match.group(1)), "seconds": float(match.group(2)),
                           "valid_loss": float(match.group(3)), "valid_perplexity": float(match.group(4))})
        elif match := PROGRESS.search(line):
            progress.append({"epoch": int(match.group(1)), "batch": int(match.group(2)),
                             "batches": int(match.group(3)), "learning_rate": float(match.group(4)),
                             "ms_per_batch": float(match.group(5))})
        elif match := TEST.search(line):
            test = {"loss": float(match.group(1)), "perplexity": float(match.group(2))}
        elif "Exiting from training early" in line:
            early = True
    return {"epochs": epochs, "progress": progress, "test": test, "stopped_early": early}


def stream_tokens(tokens, streams=10):
    """Tokens its 10-stream evaluation scores: (len // streams - 1) * streams (trimmed, last row has no target)."""
    return (tokens // streams - 1) * streams


# ---- the side --------------------------------------------------------------------------------------------------
def side(args, python, paths, out, timeout, environment, split_tokens, evaluate_command):
    """Run the real program for the race; returns its side of result.json.

    paths: {split: Path} the corpus files lstmlm reads; environment: race.child_environment(threads);
    split_tokens: race.split_tokens; evaluate_command: the exact-scoring command's prefix (python + this file).
    """
    program = program_directory(args.peer_dir)
    data_dir = prepare_data(paths, out / "peer-data")
    onnx_path, model_path = out / "peer-model.onnx", out / "peer-model.pt"
    command = [python, str(program / "main.py"), "--data", str(data_dir), "--tied", "--seed", str(args.seed),
               "--save", str(model_path), "--onnx-export", str(onnx_path), *shlex.split(args.peer_args)]
    env = {**environment, "PYTHONUNBUFFERED": "1"}
    values = {"side": "peer", "kind": "real program", "program": provenance(args.peer_dir),
              "commands": [shlex.join(command)], "precision": "float32", "threads": args.threads}
    run = run_with_budget(command, out, env, 60 * args.minutes, out / "peer.log", timeout)
    printed = parse(run["lines"])
    values["process_seconds"] = round(run["process_seconds"], 2)
    if printed["test"] is None:
        why = "the budget ended before its first epoch (it saves only at epoch ends)" if not printed["epochs"] else ""
        return {**values, "error": f"peer exited {run['status']} without its test line {why}".strip(),
                "log_tail": "\n".join(line for _, line in run["lines"][-15:])}
    size = recipe(args.peer_args)
    words = vocabulary(data_dir)
    started = run["training_started"] or 0.0
    ended = run["interrupted_at"] if run["interrupted_at"] is not None else run["last_epoch_end"]
    completed = len(printed["epochs"])
    partial = [row for row in printed["progress"] if row["epoch"] > completed]
    best = min(printed["epochs"], key=lambda row: row["valid_loss"]) if printed["epochs"] else None
    ms = [row["ms_per_batch"] for row in printed["progress"]]
    test_tokens = stream_tokens(split_tokens(data_dir / "test.txt"))  # the plain copy: paths may be .gz
    values.update({
        "stopped_by": "the budget (SIGINT)" if run["interrupted_at"] is not None else "its --epochs limit",
        "training_start_seconds": round(started, 2), "training_wall_seconds": round((ended or started) - started, 2),
        "after_training_seconds": round(run["process_seconds"] - (ended or started), 2),
        "epochs": round(completed + (partial[-1]["batch"] / partial[-1]["batches"] if partial else 0.0), 3),
        "epochs_note": "completed epochs plus the partial one up to its last progress line (every 200 batches)",
        "epochs_validated": completed, "best_epoch": best["epoch"] if best else None,
        "tokens_per_second": round(size["batch_size"] * size["bptt"] / (statistics.median(ms) / 1000), 1)
        if ms else None,
        "parameters": len(words) * size["emsize"] + len(words) + sum(
            4 * size["nhid"] * ((size["emsize"] if layer == 0 else size["nhid"]) + size["nhid"]) + 8 * size["nhid"]
            for layer in range(size["nlayers"])),
        "recipe": size, "vocabulary_size": len(words), "vocabulary_set_sha256": set_sha256(words),
        "history": printed["epochs"],
        "printed": {"test": {**printed["test"], "tokens": test_tokens,
                             "rule": "the program's: 10 streams from a zero state, the split trimmed to a multiple "
                                     "of 10"},
                    "valid": ({"loss": best["valid_loss"], "perplexity": best["valid_perplexity"],
                               "tokens": stream_tokens(split_tokens(data_dir / "valid.txt"))} if best else None)}})
    exact = score_in_subprocess(evaluate_command, onnx_path, program, data_dir, args.threads, out, timeout, env)
    if "error" in exact:
        values["exact_error"] = exact["error"]
        values["final"] = {split: {**values["printed"][split], "exact": False} for split in ("valid", "test")}
        values["final_evaluation_seconds"] = 0.0
    else:
        values["final"] = {split: {**exact["final"][split], "exact": True} for split in ("valid", "test")}
        values["final_evaluation_seconds"] = round(sum(v["seconds"] for v in exact["final"].values()), 2)
        values["vocabulary_size_of_its_corpus_code"] = exact["vocabulary_size"]
    return values


def score_in_subprocess(evaluate_command, onnx_path, program, data_dir, threads, out, timeout, env):
    if not Path(onnx_path).is_file():
        return {"error": "no ONNX export (see peer.log): the printed numbers stand alone"}
    command = [*evaluate_command, "--score", str(onnx_path), "--program", str(program), "--data", str(data_dir),
               "--threads", str(threads), "--json", str(out / "peer-exact.json")]
    with open(out / "peer-exact.log", "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
    if status != 0:
        return {"error": f"exact scoring exited {status} (peer-exact.log)"}
    return json.loads((out / "peer-exact.json").read_text(encoding="utf-8"))


# ---- exact scoring of its ONNX export (a subprocess) ----------------------------------------------------------
def exact(session, ids, eos):
    """lstmlm's rule on the exported graph: one stream at batch 1, state carried, `<eos>` first, every token.

    The graph has a fixed length (its bptt) at batch 1; the last chunk is padded with `<eos>` and only its real
    positions are scored (the LSTM runs forward, so padding after a position cannot change it).
    """
    import numpy as np

    inputs = session.get_inputs()
    length = inputs[0].shape[0]
    state = [np.zeros(item.shape, dtype=np.float32) for item in inputs[1:]]
    stream = np.concatenate([[eos], np.asarray(ids, dtype=np.int64)])
    x, y = stream[:-1], stream[1:]
    total, correct, started = 0.0, 0, time.perf_counter()
    for start in range(0, len(x), length):
        chunk = x[start:start + length]
        n = len(chunk)
        padded = np.full((length, 1), eos, dtype=np.int64)
        padded[:n, 0] = chunk
        outputs = session.run(None, {inputs[0].name: padded, **{item.name: s for item, s in zip(inputs[1:], state)}})
        log_probabilities, state = outputs[0][:n], list(outputs[1:])
        targets = y[start:start + n]
        total -= float(log_probabilities[np.arange(n), targets].astype(np.float64).sum())
        correct += int((log_probabilities.argmax(axis=1) == targets).sum())
    loss = total / len(y)
    return {"tokens": int(len(y)), "loss": loss, "perplexity": math.exp(loss), "accuracy": correct / len(y),
            "seconds": round(time.perf_counter() - started, 2)}


def score(onnx_path, program, data_dir, threads, json_path):
    """Exact valid and test scores of the exported model, ids from the program's own data.py; writes JSON."""
    import onnxruntime

    spec = importlib.util.spec_from_file_location("peer_data", Path(program) / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    corpus = module.Corpus(str(data_dir))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    eos = corpus.dictionary.word2idx["<eos>"]
    final = {split: exact(session, getattr(corpus, split).numpy(), eos) for split in ("valid", "test")}
    values = {"onnx": str(onnx_path), "vocabulary_size": len(corpus.dictionary), "threads": threads,
              "rule": "lstmlm's: one stream at batch 1, state carried, preceded by <eos>, every token",
              "final": final}
    Path(json_path).write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(description="exact scores of the real peer's ONNX export")
    parser.add_argument("--score", required=True, metavar="ONNX")
    parser.add_argument("--program", required=True, help="its word_language_model directory (for data.py)")
    parser.add_argument("--data", required=True, help="the data directory it trained on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    score(args.score, args.program, args.data, args.threads, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
