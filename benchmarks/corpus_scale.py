#!/usr/bin/env python
"""Corpus loading at scale: the streamed loader and its cache against the loader it replaced (issue 7).

    python benchmarks/corpus_scale.py                                # 10M and 100M tokens (old loader: 10M only)
    python benchmarks/corpus_scale.py --tokens 10000000 --old-max 10000000 --json out.json
    python benchmarks/corpus_scale.py --quick                        # 200k tokens, every mode (the CI check)

For each size a synthetic Zipf corpus is written once into --work (reused while its parameters match): train
has N tokens, valid and test N/100 each; words are drawn with p(rank) ~ 1/rank over 267,735 types (WikiText-103's
vocabulary size), lines are ~20 words long. Every load runs in a fresh subprocess that reports its own peak RSS
(VmHWM from /proc/self/status), in these modes:

    imports   `import lstmlm.data.corpus` (without lstmlm/__init__.py's Keras and torch) and nothing else: the baseline
    old       the loader before issue 7 (copied below): whole file -> str -> list of words per split, Counter,
              a list of ids per split, then int32 arrays
    new       load_corpus with an empty cache: one streamed pass counts and encodes train, one encodes each of
              valid and test; the arrays are written to the cache and memory-mapped
    cached    load_corpus again: hashes the text files, checks the cached arrays (CRC-32) and maps them
    no-cache  load_corpus with LSTMLM_NO_CACHE=1: as `new`, staged in a temporary folder and read into memory

The vocabulary keeps every training word (max vocabulary size 0). After loading, every child touches every id
(a sum), so the arrays are resident in every mode, then reports a sha256 of the vocabulary and ids; the parent
checks that all modes agree. "Beyond the arrays" = (peak RSS - imports' peak RSS - 4 bytes x tokens) / tokens.
"""

import argparse
import functools
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TYPES = 267_735
WORDS_PER_LINE = 20
SEED = 7
GENERATOR_VERSION = 1
MODES = ("imports", "old", "new", "cached", "no-cache")


# ---- the synthetic corpus ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def zipf_words(types):
    """Distinct words for ranks 0..types-1: bijective base-26 of rank + 26 ("z", "aa", "ab", ...)."""
    words = []
    for rank in range(types):
        n, letters = rank + 26, []
        while n:
            n, digit = divmod(n - 1, 26)
            letters.append(chr(97 + digit))
        words.append("".join(reversed(letters)))
    return np.array(words, dtype=object)


def write_zipf_text(path, tokens, seed, types=TYPES, chunk=1 << 20):
    """`tokens` words drawn from Zipf(1) over `types` words, a newline after each with p = 1/WORDS_PER_LINE."""
    rng = np.random.default_rng(seed)
    words = zipf_words(types)
    cdf = np.cumsum(1.0 / np.arange(1, types + 1))
    cdf /= cdf[-1]
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        for start in range(0, tokens, chunk):
            count = min(chunk, tokens - start)
            ranks = np.minimum(np.searchsorted(cdf, rng.random(count)), types - 1)
            pieces = np.empty(2 * count, dtype=object)
            pieces[0::2] = words[ranks]
            pieces[1::2] = np.where(rng.random(count) < 1 / WORDS_PER_LINE, "\n", " ")
            file.write("".join(pieces.tolist()))
    os.replace(temporary, path)


def ensure_corpus(work, tokens, log=print):
    """{split: path} of the N-token corpus in `work`, generated unless a matching one is there."""
    folder = Path(work) / f"zipf-{tokens}"
    sizes = {"train": tokens, "valid": max(tokens // 100, 1000), "test": max(tokens // 100, 1000)}
    recipe = {"version": GENERATOR_VERSION, "types": TYPES, "seed": SEED, "sizes": sizes}
    paths = {split: folder / f"zipf.{split}.txt" for split in sizes}
    stamp = folder / "recipe.json"
    if stamp.exists() and json.loads(stamp.read_text()) == recipe and all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for number, (split, count) in enumerate(sizes.items()):
        write_zipf_text(paths[split], count, SEED + number)
    stamp.write_text(json.dumps(recipe))
    log(f"generated {folder} ({sum(p.stat().st_size for p in paths.values()) / 1e6:,.0f} MB) in "
        f"{time.perf_counter() - started:.0f} s")
    return paths


# ---- the loader before issue 7, verbatim in substance ------------------------------------------------------
def old_read_words(path):
    """tokenize.read_words before issue 7: the whole file, decoded, newlines -> <eos>, split."""
    data = Path(path).read_bytes()
    text = data.decode("utf-8")
    words = text.replace("\n", " <eos> ").split()
    if not any(word != "<eos>" for word in words):
        raise ValueError(f"{path}: contains no words")
    return words


def old_load_corpus(paths, max_size):
    """corpus.load_corpus before issue 7: every split as a list of words, Vocabulary.build on train's list."""
    from lstmlm.data.vocabulary import Vocabulary

    words = {split: old_read_words(path) for split, path in paths.items()}
    vocabulary = Vocabulary.build(words["train"], max_size)
    splits = {split: np.asarray(vocabulary.encode(w), dtype=np.int32) for split, w in words.items()}
    return vocabulary, splits


# ---- one measurement in this process (run as a child) -------------------------------------------------------
def peak_rss_bytes():
    """This process's peak RSS: VmHWM on Linux (the high-water mark of this program's own memory map).

    Not getrusage's ru_maxrss there: it also counts the parent's RSS when the child was started by vfork (as
    subprocess does), since Linux carries the old memory map's high-water mark across exec.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def import_loader_only():
    """Make `lstmlm.*` importable without running lstmlm/__init__.py, which imports Keras and torch (about
    500 MB of RSS that loading a corpus does not need): a smaller, steadier baseline for every mode."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("lstmlm")
    package = types.ModuleType("lstmlm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("lstmlm", package)


def measure(mode, paths, cache):
    import_loader_only()
    from lstmlm.config import Config
    from lstmlm.data.corpus import load_corpus

    imports_rss = peak_rss_bytes()
    config = Config(train=str(paths["train"]), valid=str(paths["valid"]), test=str(paths["test"]),
                    max_vocabulary_size=0)
    started, cpu_started = time.perf_counter(), time.process_time()
    cached = None
    if mode == "imports":
        words, splits = [], {}
    elif mode == "old":
        vocabulary, splits = old_load_corpus(paths, None)
        words = vocabulary.words
    else:
        corpus = load_corpus(config, cache=False if mode == "no-cache" else cache)
        words, splits, cached = corpus.vocabulary.words, corpus.splits, corpus.cached
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    load_rss = peak_rss_bytes()
    checksum = sum(int(np.add.reduce(ids, dtype=np.int64)) for ids in splits.values())  # every page touched
    digest = hashlib.sha256("\n".join(words).encode())
    for split in sorted(splits):
        digest.update(np.ascontiguousarray(splits[split]).data)
    return {"mode": mode, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "tokens": {split: len(ids) for split, ids in splits.items()}, "vocabulary": len(words),
            "array_bytes": sum(int(ids.nbytes) for ids in splits.values()),
            "peak_rss_imports": imports_rss, "peak_rss_load": load_rss, "peak_rss_touched": peak_rss_bytes(),
            "cached": cached, "id_sum": checksum, "sha256": digest.hexdigest() if splits else None}


def run_child(mode, paths, cache, timeout):
    command = [sys.executable, __file__, "--measure", mode, "--cache", str(cache)] + \
        [f"--{split}={path}" for split, path in paths.items()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the whole benchmark -------------------------------------------------------------------------------------
def environment():
    import_loader_only()
    from lstmlm.machine import cpu_info

    memory = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"cpu": cpu_info()["model"], "cpu_flags": cpu_info()["flags"], "logical_cpus": cpu_info()["cores"],
            "memory_bytes": memory, "python": platform.python_version(), "numpy": np.__version__,
            "threads": "1 (the loaders are single-threaded Python)"}


def derive(row, imports, total_tokens):
    row = dict(row)
    row["tokens_per_second"] = total_tokens / row["seconds"] if row["seconds"] else None
    row["tokens_per_cpu_second"] = total_tokens / row["cpu_seconds"] if row["cpu_seconds"] else None
    if imports is not None:
        for stage in ("load", "touched"):
            beyond = row[f"peak_rss_{stage}"] - imports["peak_rss_load"] - row["array_bytes"]
            row[f"beyond_arrays_bytes_per_token_{stage}"] = beyond / total_tokens
    return row


def run(token_counts, work, old_max, modes=MODES, repeats=3, timeout=3600, log=print):
    """Measure every mode for every size; returns a JSON-ready dict (and checks that the modes agree).

    The cached load is measured `repeats` times (each in a fresh process); its row is the fastest, with every
    run's wall and CPU seconds beside it.
    """
    result = {"environment": environment(), "load_average_start": list(os.getloadavg()), "sizes": []}
    for tokens in token_counts:
        paths = ensure_corpus(work, tokens, log)
        cache = Path(work) / f"cache-{tokens}"
        shutil.rmtree(cache, ignore_errors=True)
        rows = {}
        for mode in modes:
            if mode == "old" and tokens > old_max:
                log(f"{tokens:,} tokens: old loader skipped (above --old-max {old_max:,})")
                continue
            runs = [run_child(mode, paths, cache, timeout) for _ in range(repeats if mode == "cached" else 1)]
            rows[mode] = min(runs, key=lambda row: row["seconds"])
            rows[mode]["runs_seconds"] = [row["seconds"] for row in runs]
            rows[mode]["runs_cpu_seconds"] = [row["cpu_seconds"] for row in runs]
            log(f"{tokens:,} tokens, {mode}: {rows[mode]['seconds']:.2f} s ({rows[mode]['cpu_seconds']:.2f} s CPU), "
                f"peak RSS {rows[mode]['peak_rss_touched'] / 1e6:,.0f} MB")
        digests = {mode: row["sha256"] for mode, row in rows.items() if mode != "imports"}
        if len(set(digests.values())) != 1:
            raise AssertionError(f"the loaders disagree: {digests}")
        if "cached" in rows and rows["cached"]["cached"] != {"train": True, "valid": True, "test": True}:
            raise AssertionError(f"the second load did not come from the cache: {rows['cached']['cached']}")
        some = next(row for mode, row in rows.items() if mode != "imports")
        total = sum(some["tokens"].values())
        imports = rows.get("imports")
        result["sizes"].append({
            "tokens": some["tokens"], "total_tokens": total, "vocabulary": some["vocabulary"],
            "text_bytes": sum(p.stat().st_size for p in paths.values()),
            "rows": {mode: derive(row, imports, total) for mode, row in rows.items() if mode != "imports"},
            "imports": imports})
    result["load_average_end"] = list(os.getloadavg())
    return result


def markdown(result):
    lines = ["| tokens (train+valid+test) | vocabulary | text MB | mode | seconds (wall / CPU) "
             "| tokens/s (wall / CPU) | peak RSS MB "
             "| beyond imports + arrays, bytes/token (after load / after touching every id) |",
             "|---|---|---|---|---|---|---|---|"]
    for size in result["sizes"]:
        for mode, row in size["rows"].items():
            if len(row["runs_seconds"]) > 1:
                runs = zip(row["runs_seconds"], row["runs_cpu_seconds"])
                mode = f"{mode} (fastest of {len(row['runs_seconds'])}: " + \
                    ", ".join(f"{wall:.2f}/{cpu:.2f}" for wall, cpu in runs) + ")"
            beyond = (f"{row['beyond_arrays_bytes_per_token_load']:.2f} / "
                      f"{row['beyond_arrays_bytes_per_token_touched']:.2f}"
                      if "beyond_arrays_bytes_per_token_load" in row else "")
            lines.append(f"| {size['total_tokens']:,} | {size['vocabulary']:,} | {size['text_bytes'] / 1e6:,.0f} "
                         f"| {mode} | {row['seconds']:.2f} / {row['cpu_seconds']:.2f} "
                         f"| {row['tokens_per_second']:,.0f} / {row['tokens_per_cpu_second']:,.0f} "
                         f"| {row['peak_rss_touched'] / 1e6:,.0f} | {beyond} |")
        if size["imports"]:
            lines.append(f"| | | | imports only | | | {size['imports']['peak_rss_load'] / 1e6:,.0f} | |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--quick", action="store_true", help="200,000 tokens, every mode (a CI smoke check)")
    parser.add_argument("--repeats", type=int, default=3, help="cached loads measured (the fastest is reported)")
    parser.add_argument("--old-max", type=int, default=10_000_000, help="skip the old loader above this size")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lstmlm-corpus-scale"),
                        help="corpora and caches (large: about 10 bytes per token)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        paths = {split: getattr(args, split) for split in ("train", "valid", "test")}
        print(json.dumps(measure(args.measure, paths, args.cache)))
        return 0
    tokens = [200_000] if args.quick else args.tokens
    result = run(tokens, args.work, max(args.old_max, max(tokens) if args.quick else 0),
                 repeats=1 if args.quick else args.repeats)
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(markdown(result))
    print(f"load average {result['load_average_start']} -> {result['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
