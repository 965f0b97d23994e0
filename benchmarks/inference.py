"""Inference speed in every precision, ONNX beside it, the prefix cache while typing, and the memory bound.

    python benchmarks/inference.py [--preset tutorial --preset small] [--threads 2] [--repeats 5]
    python benchmarks/inference.py --quick          # seconds; what tests/test_benchmark_inference.py runs

For each preset size: an untrained model of that shape with a 10,000-word vocabulary (speed does not depend on
training), built through lstmlm's own config (`lstmlm.preset(name)`, `build_model`) and loaded as a
LanguageModel in each precision (bfloat16 only where the CPU has it). Per precision:

- next-word latency: `predict_next` on a 30-word prompt, the prefix cache off (every call reads the whole prompt);
- greedy words/s: `generate(prompt, num_words, temperature=0)`;
- batched words/s: `generate(prompt, num_words, temperature=1, num_samples=64)`: 64 x num_words words per call;
- bytes per word: the weight bytes one word reads at batch 1 (both LSTM matrices per layer and the softmax layer).

The ONNX row: the exported float32 step model in onnxruntime (CPU, the same thread count), driven the same way
from numpy (the prompt one word per step, greedy argmax, 64 rows sampled with lstmlm's sampler).

Then the typing test: a 200-word text requested word by word (the web page's pattern) with and without the
prefix cache, and a memory-bandwidth measurement (numpy copy and torch sum over arrays larger than the caches)
that bounds batch-1 speed: words/s <= bandwidth / bytes per word.

Each figure is the median of --repeats timed calls (latency: of --calls). Wall time; the machine's load average
is printed with the results because shared machines slow everything.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lstmlm
from lstmlm import torch_backend
from lstmlm.inference.language_model import LanguageModel
from lstmlm.machine import describe
from lstmlm.run_directory import RunDirectory
from lstmlm.inference.samplers import RandomSampler, sample_rows
from lstmlm.data.vocabulary import Vocabulary

WORDS = [f"w{i}" for i in range(9998)]


FOLDER = Path(tempfile.mkdtemp(prefix="lstmlm-inference-"))  # the vocab.txt that export copies


def language_model(name, precision, prefix_cache_bytes=0):
    config = lstmlm.preset(name)
    vocabulary = Vocabulary(WORDS + ["<eos>", "<unk>"], [1] * 10000)
    vocabulary.save(FOLDER / "vocab.txt")
    model = lstmlm.build_model(config, len(vocabulary))
    return LanguageModel(RunDirectory(FOLDER, config, vocabulary, model, [], {}), precision, prefix_cache_bytes)


def median_seconds(function, repeats):
    """(median wall seconds, median CPU seconds of this process) over `repeats` calls after one warm-up.

    CPU time counts only the time this process ran (all its threads): on a shared machine it is much less
    inflated than wall time, and with one thread it is close to what a quiet core would take."""
    function()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def rates(name, seconds, count):
    """{name: count / wall seconds, name_cpu: count / CPU seconds}."""
    return {name: count / seconds[0], f"{name}_cpu": count / max(seconds[1], 1e-9)}


def prompt_text(count, offset=0):
    return " ".join(WORDS[(offset + 37 * i) % len(WORDS)] for i in range(count))


def measure_lstmlm(model, calls, repeats, num_words, samples):
    prompt = prompt_text(30)
    latency = median_seconds(lambda: model.predict_next(prompt), calls)
    greedy = median_seconds(lambda: model.generate(prompt, num_words, temperature=0), repeats)
    batched = median_seconds(lambda: model.generate(prompt, num_words, temperature=1.0, seed=1,
                                                    num_samples=samples), repeats)
    return {"latency_ms": 1000 * latency[0], "latency_cpu_ms": 1000 * latency[1],
            **rates("greedy_words_per_second", greedy, num_words),
            **rates("batched_words_per_second", batched, samples * num_words),
            "bytes_per_word": model.step_model.nbytes_per_word()}


def measure_onnx(model, calls, repeats, num_words, samples, threads):
    """The exported step model in onnxruntime, driven from numpy like lstmlm drives its step model."""
    import onnxruntime

    from lstmlm.inference.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        export_onnx(model, folder)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(f"{folder}/model.onnx", options, providers=["CPUExecutionProvider"])
    L, H = model.model.num_layers, model.model.hidden_size
    ids = model.encode_prompt(prompt_text(30))[0]

    def step(tokens, h, c):
        return session.run(None, {"ids": np.asarray(tokens, np.int64)[:, None], "h": h, "c": c})

    def prompt(rows=1):
        h = c = np.zeros((L, 1, H), np.float32)
        for index in ids:
            logits, h, c = step([index], h, c)
        return logits, h, c

    def greedy():
        logits, h, c = prompt()
        for _ in range(num_words):
            logits, h, c = step([int(np.argmax(logits[0]))], h, c)

    def batched():
        logits, h, c = prompt()
        logits, h, c = np.repeat(logits, samples, 0), np.repeat(h, samples, 1), np.repeat(c, samples, 1)
        rngs = [np.random.default_rng(1 + i) for i in range(samples)]
        for _ in range(num_words):
            logits, h, c = step(sample_rows(RandomSampler(1.0), logits, rngs), h, c)

    latency = median_seconds(prompt, calls)
    return {"latency_ms": 1000 * latency[0], "latency_cpu_ms": 1000 * latency[1],
            **rates("greedy_words_per_second", median_seconds(greedy, repeats), num_words),
            **rates("batched_words_per_second", median_seconds(batched, repeats), samples * num_words),
            "bytes_per_word": model.step_model.nbytes_per_word()}


def measure_typing(name, precision, words, repeats):
    """Per-request latency while a `words`-word text is typed: request n asks about the first n words."""
    text = prompt_text(words, offset=5).split()
    result = {}
    for label, cache_bytes in (("with_cache", 64 * 2**20), ("without_cache", 0)):
        timings, cpu_timings = [], []
        for _ in range(repeats):
            model = language_model(name, precision, cache_bytes)  # a fresh cache each time
            model.predict_next(text[0])
            for n in range(1, words + 1):
                started, cpu = time.perf_counter(), time.process_time()
                model.predict_next(" ".join(text[:n]))
                timings.append(time.perf_counter() - started)
                cpu_timings.append(time.process_time() - cpu)
        timings.sort()
        result[label] = {"median_ms": 1000 * statistics.median(timings),
                         "p90_ms": 1000 * timings[int(0.9 * len(timings))],
                         "mean_ms": 1000 * statistics.fmean(timings),
                         "median_cpu_ms": 1000 * statistics.median(cpu_timings),
                         "mean_cpu_ms": 1000 * statistics.fmean(cpu_timings)}
    return result


def memory_bandwidth(megabytes=512, repeats=5):
    """GB/s: numpy copy (read + write) and torch sum (read) over `megabytes`-MB arrays, by wall and CPU time."""
    import torch

    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    copy = median_seconds(lambda: np.copyto(target, source), repeats)
    tensor = torch.ones(megabytes * 2**20 // 4)
    read = median_seconds(lambda: tensor.sum(), repeats)
    return {"megabytes": megabytes, "numpy_copy_gb_per_s": 2 * source.nbytes / copy[0] / 1e9,
            "numpy_copy_gb_per_cpu_s": 2 * source.nbytes / copy[1] / 1e9,
            "torch_sum_read_gb_per_s": tensor.numel() * 4 / read[0] / 1e9,
            "torch_sum_read_gb_per_cpu_s": tensor.numel() * 4 / read[1] / 1e9}


def precisions():
    return ["float32"] + (["bfloat16"] if torch_backend.bfloat16_supported() else []) + ["int8"]


def run(presets, calls, repeats, num_words, samples, typing_words, threads, onnx=True, bandwidth_mb=512, log=print):
    import torch

    if threads:
        torch.set_num_threads(threads)
    result = {"machine": describe(), "torch_threads": torch.get_num_threads(), "load_average_before":
              os.getloadavg(), "command": " ".join(sys.argv), "settings": {
                  "calls": calls, "repeats": repeats, "num_words": num_words, "samples": samples,
                  "typing_words": typing_words}, "sizes": {}}
    for name in presets:
        rows = {}
        for precision in precisions():
            rows[precision] = measure_lstmlm(language_model(name, precision), calls, repeats, num_words, samples)
            log(f"{name} {precision}: {format_row(rows[precision])}")
        if onnx:
            try:
                rows["onnx (onnxruntime, float32)"] = measure_onnx(language_model(name, "float32"), calls, repeats,
                                                                   num_words, samples, threads)
                log(f"{name} onnx: {format_row(rows['onnx (onnxruntime, float32)'])}")
            except ModuleNotFoundError as error:
                log(f"{name} onnx: skipped ({error})")
        typing = {p: measure_typing(name, p, typing_words, 1) for p in ("float32", "int8")}
        result["sizes"][name] = {"rows": rows, "typing": typing}
    result["memory_bandwidth"] = [memory_bandwidth(mb) for mb in sorted({bandwidth_mb, 36, 9})]
    result["load_average_after"] = os.getloadavg()
    return result


def format_row(row):
    return (f"{row['latency_ms']:.2f} / {row['latency_cpu_ms']:.2f} ms | {row['greedy_words_per_second']:,.0f} / "
            f"{row['greedy_words_per_second_cpu']:,.0f} words/s | {row['batched_words_per_second']:,.0f} / "
            f"{row['batched_words_per_second_cpu']:,.0f} words/s | {row['bytes_per_word'] / 1e6:.1f} MB")


def markdown(result):
    settings = result["settings"]
    lines = [f"Machine: {result['machine']}; torch threads {result['torch_threads']}; load average "
             f"{', '.join(f'{x:.1f}' for x in result['load_average_before'])} before, "
             f"{', '.join(f'{x:.1f}' for x in result['load_average_after'])} after.", ""]
    for name, size in result["sizes"].items():
        lines += [f"**{name}** (each cell: wall / CPU time of the process)", "",
                  f"| precision | next-word latency, 30-word prompt (ms) | greedy (words/s) | batched, "
                  f"{settings['samples']} samples (words/s) | weight bytes per word |", "|---|---|---|---|---|"]
        for precision, row in size["rows"].items():
            lines.append(f"| {precision} | {format_row(row).replace(' ms', '').replace(' words/s', '')} |")
        lines += ["", f"Typing a {settings['typing_words']}-word text, one request per word "
                      "(`predict_next` of the words so far):", "",
                  "| precision | prefix cache | median ms (wall / CPU) | p90 ms (wall) | mean ms (wall / CPU) |",
                  "|---|---|---|---|---|"]
        for precision, typing in size["typing"].items():
            for label, row in typing.items():
                lines.append(f"| {precision} | {label.replace('_', ' ')} | {row['median_ms']:.2f} / "
                             f"{row['median_cpu_ms']:.2f} | {row['p90_ms']:.2f} | {row['mean_ms']:.2f} / "
                             f"{row['mean_cpu_ms']:.2f} |")
        lines.append("")
    lines += ["Memory bandwidth, one thread (GB/s by wall / by CPU time):", "",
              "| array | numpy copy (read + write) | torch sum (read) |", "|---|---|---|"]
    for bandwidth in result["memory_bandwidth"]:
        lines.append(f"| {bandwidth['megabytes']} MB | {bandwidth['numpy_copy_gb_per_s']:.1f} / "
                     f"{bandwidth['numpy_copy_gb_per_cpu_s']:.1f} | {bandwidth['torch_sum_read_gb_per_s']:.1f} / "
                     f"{bandwidth['torch_sum_read_gb_per_cpu_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="model size(s) (default: tutorial, small)")
    parser.add_argument("--calls", type=int, default=30, help="timed predict_next calls")
    parser.add_argument("--repeats", type=int, default=5, help="timed generate calls")
    parser.add_argument("--num-words", type=int, default=100, help="words per generate call")
    parser.add_argument("--samples", type=int, default=64, help="rows of the batched generation")
    parser.add_argument("--typing-words", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and counts (a smoke test)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.quick:
        result = run(["tiny"], 2, 1, 5, 4, 10, args.threads, onnx=not args.no_onnx, bandwidth_mb=16)
    else:
        result = run(args.preset or ["tutorial", "small"], args.calls, args.repeats, args.num_words, args.samples,
                     args.typing_words, args.threads, onnx=not args.no_onnx)
    text = markdown(result)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(f"`{result['command']}`\n\n" + text)
    return result


if __name__ == "__main__":
    main()
