#!/usr/bin/env python
"""Tokenizer throughput and corpus memory per tokenizer (issue 18, item 5's last table).

    python benchmarks/tokenizer_speed.py --text ../shared/data/wikitext-2/train.txt --tokens 10000000 \\
        --json docs/runs/tokenizers.json            # the measurement (a quiet machine: minutes)
    python benchmarks/tokenizer_speed.py --quick         # 200k synthetic tokens, a few seconds: does it run

Two measurements, each per tokenizer (word, char, byte, bpe with --vocabulary-size, default 8,000):

    encode   MB/s to encode --text (default: the synthetic train split): the tokenizer is learned on the text first
             (timed apart: `learn_seconds`), then the text is encoded in the corpus loader's blocks (TextReader,
             1 MiB ending at whitespace) as `load_corpus` does, without the cache: `encode_mb_per_second` = text
             bytes / encoding seconds (one thread for word/char/byte; bpe's batch encoder uses the library's own
             threads, RAYON_NUM_THREADS, recorded).
    memory   peak bytes per token when `load_corpus` (no cache) loads the synthetic --tokens corpus of
             benchmarks/corpus_scale.py (Zipf words, lines of ~20): each load runs in a fresh subprocess that
             reports its peak RSS (VmHWM); `beyond_arrays_bytes_per_token` = (peak - the imports-only peak - 4 bytes
             x tokens) / tokens of that tokenizer, and `per_word` the same divided by the corpus's words, so the
             tokenizers compare on one text.

The JSON holds the command, commit, CPU model, logical CPUs and the load average before and after.

Not named tokenizers.py: the tests put benchmarks/ first on sys.path, where that name would hide Hugging Face's
`tokenizers` package from every later import in the process.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus_scale  # noqa: E402  (the synthetic corpus, the peak-RSS reader, the Keras-free import)

KINDS = ("word", "char", "byte", "bpe")


def learned(kind, source, vocabulary_size):
    """(tokenizer, seconds to learn it) on one text, as corpus.py learns it from a training split."""
    from lstmlm.config import Config
    from lstmlm.data import corpus
    from lstmlm.data.corpus_cache import open_cache
    from lstmlm.data.tokenizers import WordTokenizer

    config = Config(train=str(source.path), valid=str(source.path), tokenizer=kind,
                    vocabulary_size=vocabulary_size if kind == "bpe" else 0)
    started = time.perf_counter()
    with open_cache(False) as store:
        if kind == "word":
            vocabulary, _, _ = corpus._train_split(source, False, None, store)
            tokenizer = WordTokenizer(vocabulary)
        else:
            tokenizer = corpus._learned_tokenizer(config, source, store)
    return tokenizer, time.perf_counter() - started


def encode_speed(text_path, vocabulary_size, log=print):
    """[{kind, learn_seconds, encode_seconds, encode_mb_per_second, tokens, text_bytes}] for each tokenizer."""
    from lstmlm.data.tokenizer import TextReader, TextSource

    source, size = TextSource(Path(text_path)), Path(text_path).stat().st_size
    rows = []
    for kind in KINDS:
        tokenizer, learn_seconds = learned(kind, source, vocabulary_size)
        started, tokens = time.perf_counter(), 0
        for block in TextReader(source):
            tokens += len(tokenizer.encode(block))
        seconds = time.perf_counter() - started
        rows.append({"kind": kind, "learn_seconds": learn_seconds, "encode_seconds": seconds,
                     "encode_mb_per_second": size / 1e6 / seconds, "tokens": tokens, "text_bytes": size,
                     "vocabulary": len(tokenizer.vocabulary)})
        log(f"encode {kind}: {rows[-1]['encode_mb_per_second']:.1f} MB/s, {tokens:,} tokens, learned in "
            f"{learn_seconds:.1f} s")
    return rows


def measure_child(kind, paths, vocabulary_size):
    """In a fresh process: load the corpus with one tokenizer (no cache); its peak RSS and token counts."""
    corpus_scale.import_loader_only()  # a fresh process: lstmlm without Keras and torch
    imports_rss = corpus_scale.peak_rss_bytes()
    from lstmlm.config import Config
    from lstmlm.data.corpus import load_corpus, text_statistics

    if kind == "imports":
        return {"kind": kind, "peak_rss": imports_rss}
    config = Config(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]), tokenizer=kind,
                    vocabulary_size=vocabulary_size if kind == "bpe" else 0)
    started = time.perf_counter()
    loaded = load_corpus(config, cache=False)
    seconds = time.perf_counter() - started
    peak = corpus_scale.peak_rss_bytes()
    words = sum(text_statistics(path)[1] for path in paths.values())
    return {"kind": kind, "seconds": seconds, "peak_rss": peak, "imports_rss": imports_rss,
            "tokens": sum(len(ids) for ids in loaded.splits.values()), "words": words,
            "array_bytes": sum(int(ids.nbytes) for ids in loaded.splits.values())}


def memory(tokens, work, vocabulary_size, timeout=3600, log=print):
    paths = corpus_scale.ensure_corpus(work, tokens, log)
    rows = {}
    for kind in ("imports",) + KINDS:
        command = [sys.executable, __file__, "--measure", kind, "--vocabulary-size", str(vocabulary_size)] + \
            [f"--{split}={path}" for split, path in paths.items()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} failed ({done.returncode}): {done.stderr[-2000:]}")
        rows[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    baseline = rows.pop("imports")["peak_rss"]
    for row in rows.values():
        beyond = row["peak_rss"] - baseline - row["array_bytes"]
        row["beyond_arrays_bytes_per_token"] = beyond / row["tokens"]
        row["beyond_arrays_bytes_per_word"] = beyond / row["words"]
        log(f"memory {row['kind']}: {row['beyond_arrays_bytes_per_token']:.2f} bytes/token beyond the arrays, "
            f"{row['tokens']:,} tokens, {row['seconds']:.1f} s")
    return list(rows.values())


def environment():
    from lstmlm.machine import cpu_info

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"command": sys.argv, "commit": commit, "cpu": cpu_info()["model"], "logical_cpus": os.cpu_count(),
            "load_average_before": os.getloadavg(), "python": platform.python_version(),
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "the library's default (all cores)")}


def markdown(result):
    lines = ["| tokenizer | encode MB/s | learn s | tokens | bytes/token beyond arrays | bytes/word |",
             "|---|---:|---:|---:|---:|---:|"]
    memory_rows = {row["kind"]: row for row in result["memory"]}
    for row in result["encode"]:
        held = memory_rows.get(row["kind"], {})
        lines.append(f"| {row['kind']} | {row['encode_mb_per_second']:.1f} | {row['learn_seconds']:.1f} | "
                     f"{row['tokens']:,} | {held.get('beyond_arrays_bytes_per_token', float('nan')):.2f} | "
                     f"{held.get('beyond_arrays_bytes_per_word', float('nan')):.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="the text whose encoding is timed (default: the synthetic train split)")
    parser.add_argument("--tokens", type=int, default=10_000_000, help="synthetic corpus size for the memory test")
    parser.add_argument("--vocabulary-size", type=int, default=8000, help="bpe ids")
    parser.add_argument("--quick", action="store_true", help="200,000 tokens, a smoke check")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lstmlm-corpus-scale"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # a child of `memory`
        paths = {split: Path(getattr(args, split)) for split in ("train", "valid", "test")}
        print(json.dumps(measure_child(args.measure, paths, args.vocabulary_size)))
        return 0
    tokens = 200_000 if args.quick else args.tokens
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    corpus_scale.import_loader_only()  # once per process
    result = {"environment": environment(), "tokens": tokens}
    text = args.text or corpus_scale.ensure_corpus(args.work, tokens, log)["train"]
    result["encode"] = encode_speed(text, args.vocabulary_size, log)
    result["memory"] = memory(tokens, args.work, args.vocabulary_size, log=log)
    result["environment"]["load_average_after"] = os.getloadavg()
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
