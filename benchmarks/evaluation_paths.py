#!/usr/bin/env python
"""Exact evaluation of a trained run by its two paths, on the first N tokens of a split, alternating twice:

- `step`: the run's inference step model (step_model.py; in bfloat16 a per-word cell loop built for batch-1
  prediction);
- `keras`: the Keras model under the same precision's autocast (training's validation path; what
  `lstmlm evaluate` runs in bfloat16 since 2026-11-28).

    python benchmarks/evaluation_paths.py runs/race/wikitext-2-60min-1t-sequential/lstmlm-run --tokens 20000 --threads 1
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import lstmlm
    from lstmlm.data.corpus import read_split
    from lstmlm.inference.evaluate import evaluate_ids

    model = lstmlm.load(args.run_dir)
    ids, _ = read_split(model.config, args.split, model.vocabulary)
    ids = ids[: args.tokens]
    for path in ("step", "keras", "step", "keras"):
        started = time.perf_counter()
        if path == "step":
            result = evaluate_ids(model.step_model, ids, model.vocabulary)
        else:
            result = evaluate_ids(model.model, ids, model.vocabulary, precision=model.precision)
        seconds = time.perf_counter() - started
        print(f"{path} {model.precision}: perplexity {result['perplexity']:.5f} accuracy {result['accuracy']:.5f} "
              f"top-5 {result['top5_accuracy']:.5f} ({result['tokens']:,} tokens) {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
