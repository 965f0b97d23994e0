#!/usr/bin/env python
"""Where generation time goes, and what bounds it: issue 20's goals (a 30-word prompt's first word <= 3 ms, greedy
>= 2,000 words/s, 64 samples >= 20,000 words/s, tutorial size, 2 threads) against the parts of one word.

    python benchmarks/generation_paths.py --threads 2 --out docs/runs/generation-paths
    python benchmarks/generation_paths.py --quick          # seconds: the test's smoke run

For an untrained tutorial-size model (2x500, 10,000 words; speed does not depend on training), per precision:
- the parts of a step: `step_model.advance` of one word (both LSTM layers), `logits` (the softmax layer) at 1
  and 64 rows, and the sampler (greedy argmax; temperature 1 over 64 rows, lstmlm's float64 sampler);
- the prompt: lstmlm's path today (`predict_next`, prefix cache off: blocks of 8 words for the float precisions)
  against fused candidates that read the whole prompt in one call: torch.lstm in float32 (torch's native kernel
  and oneDNN's) and in bfloat16 (oneDNN; its state is then bfloat16 too, unlike lstmlm's float32 state);
- the bound: the weight bytes one word reads at batch 1 (both LSTM layers and the softmax layer) and this
  machine's read bandwidth for arrays of that size (they fit the last-level cache on large-cache CPUs), so
  words/s <= bandwidth / bytes per word at batch 1.
Medians of wall time over --repeats calls after a warm-up; the load average before and after is recorded.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import inference  # noqa: E402  (language_model(), prompt_text(), precisions())

from lstmlm import torch_backend  # noqa: E402
from lstmlm.inference.samplers import GreedySampler, RandomSampler, sample_rows  # noqa: E402
from lstmlm.machine import describe  # noqa: E402


def median_ms(function, repeats):
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def parts(name, precision, repeats, samples):
    model = inference.language_model(name, precision)
    step = model.step_model
    one, many = step.initial_states(1), step.initial_states(samples)
    hidden = torch.zeros(1, step.hidden_size)
    logits_one, logits_many = step.logits(hidden), step.logits(torch.zeros(samples, step.hidden_size))
    rngs = [np.random.default_rng(i) for i in range(samples)]
    prompt = inference.prompt_text(30)
    return {
        "advance_one_word_ms": median_ms(lambda: step.advance([[5]], one), repeats),
        "advance_one_word_64_rows_ms": median_ms(lambda: step.advance(np.full((samples, 1), 5), many), repeats),
        "logits_1_row_ms": median_ms(lambda: step.logits(hidden), repeats),
        "logits_64_rows_ms": median_ms(lambda: step.logits(torch.zeros(samples, step.hidden_size)), repeats),
        "greedy_sampler_ms": median_ms(lambda: sample_rows(GreedySampler(), logits_one, rngs[:1]), repeats),
        "sampler_64_rows_ms": median_ms(lambda: sample_rows(RandomSampler(1.0), logits_many, rngs), repeats),
        "prompt_today_ms": median_ms(lambda: model.predict_next(prompt), repeats),
        "bytes_per_word": step.nbytes_per_word(),
    }, model


def fused_prompts(model, repeats):
    """One call for the whole prompt (31 ids with the leading <eos>) in torch.lstm, from the float32 weights."""
    step = model.step_model  # a float32 TorchStepModel
    ids = model.encode_prompt(inference.prompt_text(30))[0]
    x = step.embedding[torch.tensor([ids])]
    states = step.initial_states(1)
    weights_bf16 = [w.to(torch.bfloat16) for w in step.flat_weights]
    x_bf16, states_bf16 = x.to(torch.bfloat16), tuple(s.to(torch.bfloat16) for s in states)

    def run(inputs, hidden, weights, native):
        with torch.no_grad():
            if native:
                with torch_backend.native_lstm():
                    return torch.lstm(inputs, hidden, weights, True, step.num_layers, 0.0, False, False, True)
            return torch.lstm(inputs, hidden, weights, True, step.num_layers, 0.0, False, False, True)

    result = {"prompt_ids": len(ids),
              "torch_lstm_float32_native_ms": median_ms(lambda: run(x, states, step.flat_weights, True), repeats),
              "torch_lstm_float32_onednn_ms": median_ms(lambda: run(x, states, step.flat_weights, False), repeats)}
    if torch_backend.bfloat16_supported():
        result["torch_lstm_bfloat16_onednn_ms"] = median_ms(
            lambda: run(x_bf16, states_bf16, weights_bf16, False), repeats)
    return result


def read_bandwidth(megabytes, repeats):
    """GB/s of torch sum over a float32 array of `megabytes` (read once per call), by wall time."""
    tensor = torch.ones(int(megabytes * 2**20) // 4)
    return tensor.numel() * 4 / (median_ms(lambda: tensor.sum(), repeats) / 1000) / 1e9


def run(name, threads, repeats, samples):
    if threads:
        torch.set_num_threads(threads)
    result = {"command": " ".join(["python", *sys.argv]), "machine": describe(), "torch_threads":
              torch.get_num_threads(), "load_average_before": os.getloadavg(), "size": name, "samples": samples,
              "goals": {"prompt_first_word_ms": 3.0, "greedy_words_per_second": 2000,
                        "batched_64_words_per_second": 20000}, "precisions": {}}
    float32_model = None
    for precision in inference.precisions():
        values, model = parts(name, precision, repeats, samples)
        one_word = values["advance_one_word_ms"] + values["logits_1_row_ms"] + values["greedy_sampler_ms"]
        rows_word = (values["advance_one_word_64_rows_ms"] + values["logits_64_rows_ms"]
                     + values["sampler_64_rows_ms"])
        values["greedy_words_per_second_from_parts"] = 1000 / one_word
        values["batched_words_per_second_from_parts"] = 1000 * samples / rows_word
        values["read_gb_per_second_at_that_size"] = read_bandwidth(values["bytes_per_word"] / 2**20, repeats)
        values["greedy_bound_words_per_second"] = values["read_gb_per_second_at_that_size"] * 1e9 / values[
            "bytes_per_word"]
        result["precisions"][precision] = values
        if precision == "float32":
            float32_model = model
    result["fused_prompt"] = fused_prompts(float32_model, repeats)
    result["load_average_after"] = os.getloadavg()
    return result


def markdown(result):
    lines = [f"Machine: {result['machine']}; torch threads {result['torch_threads']}; load "
             f"{result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}. Size "
             f"`{result['size']}`; milliseconds are medians of wall time.", "",
             "| precision | prompt today (ms) | one word: advance + logits + argmax (ms) | greedy words/s from "
             "parts | bound: read GB/s / bytes per word | 64 rows: advance + logits + sampler (ms) | 64-row "
             "words/s from parts |", "|---|---|---|---|---|---|---|"]
    for precision, v in result["precisions"].items():
        lines.append(
            f"| {precision} | {v['prompt_today_ms']:.2f} | {v['advance_one_word_ms']:.3f} + "
            f"{v['logits_1_row_ms']:.3f} + {v['greedy_sampler_ms']:.3f} | "
            f"{v['greedy_words_per_second_from_parts']:,.0f} | {v['greedy_bound_words_per_second']:,.0f} "
            f"({v['read_gb_per_second_at_that_size']:.1f} GB/s / {v['bytes_per_word'] / 1e6:.1f} MB) | "
            f"{v['advance_one_word_64_rows_ms']:.2f} + {v['logits_64_rows_ms']:.2f} + {v['sampler_64_rows_ms']:.2f} "
            f"| {v['batched_words_per_second_from_parts']:,.0f} |")
    fused = result["fused_prompt"]
    lines += ["", f"The prompt ({fused['prompt_ids']} ids) in one torch.lstm call: "
              + ", ".join(f"{key.replace('torch_lstm_', '').replace('_ms', '')} {value:.2f} ms"
                          for key, value in fused.items() if key.endswith("_ms")) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tutorial")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    result = run("tiny" if args.quick else args.preset, args.threads, 2 if args.quick else args.repeats,
                 4 if args.quick else args.samples)
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
