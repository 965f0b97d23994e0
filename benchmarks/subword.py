#!/usr/bin/env python
"""Subword language modelling on WikiText-2: lstmlm's BPE recipe at a wall-clock budget, scored per word so that
it compares with the word-level `speedrun-adaptive` on the same text (issue 18, item 5).

    python benchmarks/subword.py --minutes 15 --threads 2 --out runs/subword/wikitext-2-bpe-15min-2t
    python benchmarks/subword.py --quick      # smoke run: a PTB slice, a 20-second budget

One subprocess trains (`python -m lstmlm train --preset speedrun-bpe --train/--valid/--test FILES --max-minutes M
--threads T --seed S --out RUN --no-report`; the budget starts after corpus reading and the tokenizer's training
and covers training plus its validations); its model is the best-validation model.keras. Two more score it
exactly, the way a user would: `python -m lstmlm evaluate RUN --split valid|test --json --precision float32` (the
split as one stream at batch 1, state carried, every token scored in float32 whatever precision it trained in).
Each has T threads (OMP_NUM_THREADS = MKL_NUM_THREADS = T).

The numbers (lstmlm's `evaluate`, issue 18 item 3): loss in nats per BPE token and per-token perplexity;
word perplexity = exp(total nats / words of the same text), words = whitespace-separated words plus one `<eos>`
per line, the word-level models' own count, so the figure compares with a word model's perplexity on that text;
bits per character = total nats / ln 2 / characters (newlines counted). WikiText-2 arrives with `<unk>` in it; a
BPE model spells `<unk>` out in subwords like any other word and is charged for every piece.
The comparison rows: the lstmlm side of every committed WikiText-2 race (docs/runs/race/wikitext-2-*.json) at
the same budget, whose test perplexity is a word perplexity by construction.
Output (--out): result.json, result.md, the run directory and each subprocess' log.
"""

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import char_race  # noqa: E402  (run_json)
import race  # noqa: E402  (machine, git_commit, run_logged, shown, wikitext_paths, write_quick_corpus)

PRESET = "speedrun-bpe"
RACES = HERE.parent / "docs" / "runs" / "race"


def commands(python, args, run_dir, files):
    """(train command, {split: evaluate command})."""
    corpus = [item for split in ("train", "valid", "test") for item in (f"--{split}", str(files[split]))]
    train = [python, "-m", "lstmlm", "train", "--preset", args.preset, "--max-minutes", f"{args.minutes:g}",
             "--threads", str(args.threads), "--seed", str(args.seed), "--out", str(run_dir), "--no-report",
             *corpus, *args.lstmlm_args.split()]
    evaluate = {split: [python, "-m", "lstmlm", "evaluate", str(run_dir), "--split", split, "--json",
                        "--precision", "float32"] for split in ("valid", "test")}
    return train, evaluate


def history(run_dir):
    with open(Path(run_dir) / "history.csv", encoding="utf-8", newline="") as handle:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()}
                for row in csv.DictReader(handle)]


def summarise_run(run_dir):
    """What the run's own files say: parameters, precision, vocabulary, epochs, tokens/s, the history."""
    info = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    rows = history(run_dir)
    tokens = sum(row["train_tokens"] for row in rows)
    seconds = sum(row["train_tokens"] / row["tokens_per_second"] for row in rows if row["tokens_per_second"])
    best = min(rows, key=lambda row: row["valid_loss"]) if rows else None
    return {"run_dir": str(run_dir), "precision": info.get("precision"), "parameters": info.get("parameters"),
            "threads": info.get("versions", {}).get("threads"), "tokenizer": info["config"]["tokenizer"],
            "vocabulary_size": info["config"]["vocabulary_size"], "tokens": info.get("tokens"),
            "epochs": round(tokens / info["tokens"]["train"], 3), "epochs_validated": len(rows),
            "best_epoch": int(best["epoch"]) if best else None, "train_tokens": int(tokens),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "training_wall_seconds": rows[-1]["wall_seconds"] if rows else None, "history": rows}


def word_level_rows(minutes, directory=RACES):
    """The lstmlm side of each committed WikiText-2 race at `minutes`: its test perplexity is per word."""
    rows = []
    for path in sorted(Path(directory).glob("wikitext-2-*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        side = result.get("sides", {}).get("lstmlm", {})
        if result.get("minutes") != minutes or "final" not in side:
            continue
        rows.append({"artifact": path.relative_to(HERE.parent).as_posix() if path.is_relative_to(HERE.parent)
                     else str(path), "command": side["commands"][0], "threads": result["threads"],
                     "mode": result["mode"], "test_word_perplexity": side["final"]["test"]["perplexity"],
                     "valid_word_perplexity": side["final"]["valid"]["perplexity"], "epochs": side.get("epochs"),
                     "tokens_per_second": side.get("tokens_per_second"), "cpu": result["machine_at_start"]["cpu"],
                     "load_average": {"start": result["machine_at_start"]["load_average"],
                                      "end": result["machine_at_end"]["load_average"]}})
    return rows


def run(args, log=print):
    out = Path(args.out or f"runs/subword/wikitext-2-bpe-{args.minutes:g}min-{args.threads}t")
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        files, corpus = race.write_quick_corpus(out / "corpus"), {"name": "quick", "source": "bundled PTB slice"}
    else:
        files = race.wikitext_paths(args.wikitext_dir)
        corpus = {"name": "wikitext-2", "source": str(args.wikitext_dir)}
    load_before = [round(x, 2) for x in os.getloadavg()]
    run_dir = out / "run"
    train, evaluate = commands(sys.executable, args, run_dir, files)
    timeout = 60 * args.minutes * 3 + 600
    log(f"subword: {corpus['name']}, {args.preset}, {args.minutes:g} min, {args.threads} thread(s) -> {out}")
    status, seconds = race.run_logged(train, out / "train.log", args.threads, timeout)
    result = {"command": " ".join(["python", "benchmarks/subword.py", *args.argv]), "git_commit": race.git_commit(),
              "note": args.note, "corpus": corpus, "preset": args.preset, "minutes": args.minutes,
              "threads": args.threads, "seed": args.seed, "commands": [race.shown(train)] +
              [race.shown(c) for c in evaluate.values()], "train_process_seconds": round(seconds, 2)}
    if status != 0:
        result["error"] = f"train exited {status}"
        result["log_tail"] = race.log_tail(out / "train.log")
    else:
        final = {}
        for split, command in evaluate.items():
            status, values, seconds = char_race.run_json(command, out / f"evaluate-{split}.log", args.threads,
                                                         timeout)
            if status != 0 or values is None:
                result["error"] = f"evaluate --split {split} exited {status}"
                result["log_tail"] = race.log_tail(out / f"evaluate-{split}.log")
                break
            final[split] = {key: values[key] for key in ("tokens", "words", "characters", "loss", "perplexity",
                                                         "word_perplexity", "bits_per_character")}
            final[split]["seconds"] = round(values["seconds"], 2)
        result.update(summarise_run(run_dir), final=final)
    result["machine"] = race.machine()
    result["load_average"] = {"start": load_before, "end": result["machine"]["load_average"]}
    result["word_level"] = word_level_rows(args.minutes)
    result["finite"] = bool(result.get("final")) and all(
        math.isfinite(v["word_perplexity"]) for v in result["final"].values())
    write(result, out)
    return result


def markdown(result):
    lines = [f"# {result['corpus']['name']}: `{result['preset']}` (BPE) at {result['minutes']:g} minutes, "
             f"{result['threads']} thread(s)", "", f"`{result['command']}`", "",
             f"Commit {result['git_commit']}; {result['machine']['cpu']}, {result['machine']['logical_cpus']} CPUs; "
             f"load {result['load_average']['start'][0]} -> {result['load_average']['end'][0]}. {result['note']}", ""]
    if "error" in result:
        return "\n".join(lines + [f"**Failed:** {result['error']}", "", "```", result["log_tail"], "```", ""])
    lines += ["| split | BPE tokens | words | characters | nats / token | perplexity per token | word perplexity "
              "| bits / character |", "|---|---|---|---|---|---|---|---|"]
    for split, v in result["final"].items():
        lines.append(f"| {split} | {v['tokens']:,} | {v['words']:,} | {v['characters']:,} | {v['loss']:.4f} | "
                     f"{v['perplexity']:.2f} | {v['word_perplexity']:.2f} | {v['bits_per_character']:.4f} |")
    lines += ["", f"{result['parameters']:,} parameters, {result['precision']}; {result['epochs']} epochs "
              f"({result['epochs_validated']} validated, best {result['best_epoch']}); "
              f"{result['tokens_per_second']:,.0f} tokens/s.", ""]
    if result["word_level"]:
        lines += ["Word-level lstmlm at the same budget (test perplexity per word):", ""]
        lines += [f"- {row['test_word_perplexity']:.2f}: {row['threads']} thread(s), {row['mode']}, "
                  f"{row['epochs']} epochs ([{Path(row['artifact']).name}]({row['artifact']}))"
                  for row in result["word_level"]]
    return "\n".join(lines) + "\n"


def write(result, out):
    for name, text in (("result.json", json.dumps(result, indent=1) + "\n"), ("result.md", markdown(result))):
        path = Path(out) / name
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--wikitext-dir", default="/work/shared/data/wikitext-2",
                        help="train.txt, valid.txt, test.txt")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default=PRESET)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lstmlm-args", default="", help="more `lstmlm train` flags (one string)")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    parser.add_argument("--out", help="result directory")
    parser.add_argument("--quick", action="store_true", help="a PTB slice and a 20-second budget")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.minutes = 20 / 60
        args.lstmlm_args = ("--hidden-size 32 --vocabulary-size 300 --batch-size 4 --num-steps 10 "
                            "--evaluation-batch-size 1 " + args.lstmlm_args)
        args.out = args.out or tempfile.mkdtemp(prefix="subword-quick-")
    if args.minutes <= 0 or args.threads < 1:
        parser.error("--minutes and --threads must be positive")
    return args


def main(argv=None):
    result = run(parse_args(argv))
    if "error" in result:
        raise SystemExit(f"subword: error: {result['error']}")
    test = result["final"]["test"]
    print(f"subword: test word perplexity {test['word_perplexity']:.2f}, {test['bits_per_character']:.4f} bits per "
          f"character, {result['epochs']} epochs")


if __name__ == "__main__":
    main()
