"""Next-word latency and generation speed through lstmlm's public inference API.

    python benchmarks/inference.py --preset tutorial --preset small [--threads 1]

For each preset size: an untrained model with a 10,000-word vocabulary (speed does not depend on training),
`LanguageModel.predict_next` on a 30-word prompt (median over --calls), and `LanguageModel.generate` of
--num-words words at temperature 0 (greedy) and at temperature 1 with top-k 40.
"""

import argparse
import statistics
import time

import lstmlm
from lstmlm.language_model import LanguageModel
from lstmlm.run_directory import Run
from lstmlm.vocabulary import Vocabulary


def language_model(name):
    config = lstmlm.preset(name)
    vocabulary = Vocabulary([f"w{i}" for i in range(9998)] + ["<eos>", "<unk>"], [1] * 10000)
    return LanguageModel(Run(None, config, vocabulary, lstmlm.build_model(config, len(vocabulary)), [], {}))


def measure(name, calls, words):
    model = language_model(name)
    prompt = " ".join(f"w{i}" for i in range(30))
    model.predict_next(prompt)  # warm-up
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        model.predict_next(prompt)
        times.append(time.perf_counter() - started)
    result = {"preset": name, "predict_next_ms": 1000 * statistics.median(times)}
    for label, options in (("greedy", dict(temperature=0)), ("top_k_40", dict(temperature=1.0, top_k=40))):
        started = time.perf_counter()
        model.generate("w1 w2", num_words=words, seed=1, **options)
        result[f"generate_{label}_words_per_second"] = words / (time.perf_counter() - started)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="model size(s) to time (default: tutorial, small)")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--num-words", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print("| model size | predict_next, 30-word prompt (median ms) | greedy generation (words/s) | "
          "top-k 40 sampling (words/s) |")
    print("|---|---|---|---|")
    for name in args.preset or ["tutorial", "small"]:
        r = measure(name, args.calls, args.num_words)
        print(f"| {name} | {r['predict_next_ms']:.1f} | {r['generate_greedy_words_per_second']:,.0f} | "
              f"{r['generate_top_k_40_words_per_second']:,.0f} |")


if __name__ == "__main__":
    main()
