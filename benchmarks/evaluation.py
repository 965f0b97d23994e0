#!/usr/bin/env python
"""Exact evaluation speed: lstmlm's evaluate_ids (batch 1, the state carried through the whole text) on a corpus's
valid and test splits, optionally side by side with another lstmlm source tree (the code before a change).

    python benchmarks/evaluation.py --data /work/shared/data/wikitext-2 --threads 1 --train-steps 200 \\
        --compare /work/main/src --repeats 2 --out docs/evaluation-latest.json
    python benchmarks/evaluation.py --quick          # seconds: a synthetic corpus, a tiny model, no comparison

The model has the preset's shape (default `speedrun`: 2x256, tied) over the full training vocabulary
(--max-vocabulary-size 0), trained for --train-steps steps of lstmlm's train_step (so its distribution is not
uniform), saved as .keras; every source tree evaluates that same file on the same ids in a fresh process, at the
precision `train` uses (`auto`: bfloat16 where the CPU has it). This is the path of `train`'s validation and of
its final valid and test report (evaluate_ids on the Keras model under training's autocast); `lstmlm evaluate`
and LanguageModel.evaluate run a step model instead (step_model.py), not timed here. Runs alternate between trees, so a
busy moment of a shared machine hits both; the figure is the median over --repeats. --tokens N evaluates only
the first N tokens of each split (the rate is what changes; say so when quoting it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

SPLITS = ("valid", "test")


def prepare(directory, config, train_steps, tokens, log=print):
    """Write model.keras and the splits' ids (each preceded by <eos>, as evaluate does) into `directory`."""
    import keras
    import numpy as np

    from lstmlm import torch_backend

    from lstmlm.precision import resolve_precision
    from lstmlm.data.batches import stream_batches
    from lstmlm.data.corpus import load_corpus
    from lstmlm.model.lstm_language_model import build_model
    from lstmlm.training.trainer import Trainer, train_step

    corpus = load_corpus(config)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config, len(corpus.vocabulary))
    if train_steps:
        trainer = Trainer(config, model, resolve_precision(config.precision))
        states = model.initial_states(config.batch_size)
        started = time.perf_counter()
        for index, (x, y) in enumerate(stream_batches(corpus["train"], config.batch_size, config.num_steps)):
            if index == train_steps:
                break
            trainer.seed_dropout(1, index)
            loss, _, states = train_step(trainer, x, y, states)
            states = torch_backend.repackage_hidden(states)
        log(f"  trained {train_steps} steps in {time.perf_counter() - started:.0f} s, last loss {float(loss):.3f}")
    model.save(Path(directory) / "model.keras")
    eos = corpus.vocabulary.index["<eos>"]  # evaluate's leading <eos> (lstmlm's tokenizer.EOS)
    for split in SPLITS:
        ids = np.asarray(corpus[split] if not tokens else corpus[split][:tokens], dtype=np.int32)
        np.save(Path(directory) / f"{split}.npy", np.concatenate([[eos], ids]).astype(np.int32))
    return {"vocabulary_size": len(corpus.vocabulary), "parameters": int(model.count_params()),
            "tokens": {split: int(min(len(corpus[split]), tokens or len(corpus[split]))) for split in SPLITS}}


def child(directory, precision, threads):
    """In a fresh process (PYTHONPATH = the tree under test): evaluate model.keras on each split's ids."""
    import numpy as np
    import torch

    import lstmlm  # noqa: F401  (registers the custom Keras classes)
    from lstmlm.inference.evaluate import evaluate_ids
    from lstmlm.run_directory import load_keras_model

    if threads:
        torch.set_num_threads(threads)
    model = load_keras_model(Path(directory) / "model.keras")
    out = {"lstmlm": str(Path(lstmlm.__file__).parent)}
    for split in SPLITS:
        ids = np.load(Path(directory) / f"{split}.npy", allow_pickle=False)
        cpu = time.process_time()
        result = evaluate_ids(model, ids, None, 1, precision=precision)  # ids already start with <eos>
        out[split] = {key: result[key] for key in ("tokens", "loss", "perplexity", "accuracy", "top5_accuracy",
                                                   "seconds")}
        out[split]["cpu_seconds"] = time.process_time() - cpu
    return out


def run_child(tree, directory, precision, threads):
    environment = {**os.environ, "PYTHONPATH": str(tree), "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(directory),
                           "--precision", precision, "--threads", str(threads)],
                          capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"evaluation child for {tree} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs):
    """Medians over repeats of each tree's seconds; the first repeat's metrics."""
    first = runs[0]
    out = {"lstmlm": first["lstmlm"], "repeats": len(runs)}
    for split in SPLITS:
        out[split] = {**first[split], "seconds": statistics.median(r[split]["seconds"] for r in runs),
                      "cpu_seconds": statistics.median(r[split]["cpu_seconds"] for r in runs),
                      "seconds_all": [round(r[split]["seconds"], 2) for r in runs]}
    out["valid_plus_test_seconds"] = statistics.median(sum(r[s]["seconds"] for s in SPLITS) for r in runs)
    out["valid_plus_test_cpu_seconds"] = statistics.median(sum(r[s]["cpu_seconds"] for s in SPLITS) for r in runs)
    return out


def run(args, log=print):
    from lstmlm import torch_backend
    from lstmlm.precision import resolve_precision
    from lstmlm.machine import cpu_info
    from lstmlm.presets import preset

    if args.threads:  # the training before the evaluations too
        import torch

        torch.set_num_threads(args.threads)
    this_tree = Path(__file__).resolve().parents[1] / "src"
    trees = [Path(t) for t in args.compare] + [this_tree]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        if args.quick:
            config = preset("tiny", max_vocabulary_size=0, **quick_corpus(directory))
        else:
            data = Path(args.data)
            config = preset(args.preset, train=str(data / "train.txt"), valid=str(data / "valid.txt"),
                            test=str(data / "test.txt"), max_vocabulary_size=args.max_vocabulary_size)
        precision = args.precision or resolve_precision(config.precision)
        prepared = prepare(directory, config, args.train_steps, args.tokens, log=log)
        runs = {str(tree): [] for tree in trees}
        for repeat in range(args.repeats):
            for tree in trees:
                started = time.perf_counter()
                runs[str(tree)].append(run_child(tree, directory, precision, args.threads))
                log(f"  repeat {repeat + 1}/{args.repeats}, {tree}: {time.perf_counter() - started:.0f} s")
    results = {tree: summarise(values) for tree, values in runs.items()}
    baseline, ours = results[str(trees[0])], results[str(this_tree)]
    comparison = {"speedup_valid_plus_test": baseline["valid_plus_test_seconds"] / ours["valid_plus_test_seconds"],
                  "speedup_valid_plus_test_cpu": (baseline["valid_plus_test_cpu_seconds"]
                                                  / ours["valid_plus_test_cpu_seconds"]),
                  "perplexity_relative_difference": {
                      split: ours[split]["perplexity"] / baseline[split]["perplexity"] - 1 for split in SPLITS}}
    return {"config": {"preset": "tiny" if args.quick else args.preset, "hidden_size": config.hidden_size,
                       "num_layers": config.num_layers, "tie_weights": config.tie_weights,
                       "train_steps": args.train_steps, "precision": precision, **prepared},
            "machine": {"cpu": cpu_info(), "threads": args.threads or os.cpu_count(),
                        "load_average_start": [round(v, 2) for v in load_start],
                        "load_average_end": [round(v, 2) for v in os.getloadavg()]},
            "results": results, "comparison": comparison if len(trees) > 1 else None}


def quick_corpus(directory):
    """A synthetic corpus (Zipf words over 300 types) for the quick mode: {'train', 'valid', 'test'} paths."""
    import numpy as np

    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 301)
    paths = {}
    for split, count in (("train", 4000), ("valid", 600), ("test", 600)):
        words = [f"w{i}" for i in rng.choice(300, size=count, p=p / p.sum())]
        lines = [" ".join(words[i:i + 12]) for i in range(0, count, 12)]
        paths[split] = str(Path(directory) / f"{split}.txt")
        Path(paths[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def markdown(result):
    config, machine = result["config"], result["machine"]
    lines = [f"Model {config['preset']} shape ({config['num_layers']}x{config['hidden_size']}, tied: "
             f"{config['tie_weights']}), vocabulary {config['vocabulary_size']:,}, {config['train_steps']} training "
             f"steps; {config['precision']}; tokens valid {config['tokens']['valid']:,}, test "
             f"{config['tokens']['test']:,}; CPU {machine['cpu']['model']} ({' '.join(machine['cpu']['flags'])}), "
             f"{machine['threads']} threads, load average {machine['load_average_start']} -> "
             f"{machine['load_average_end']}.", "",
             "| lstmlm source | valid s | test s | valid + test s (CPU s) | valid ppl | test ppl | test acc | "
             "test top-5 |", "|---|---|---|---|---|---|---|---|"]
    for tree, row in result["results"].items():
        lines.append(f"| `{tree}` | {row['valid']['seconds']:.1f} | {row['test']['seconds']:.1f} | "
                     f"{row['valid_plus_test_seconds']:.1f} ({row['valid_plus_test_cpu_seconds']:.1f}) | "
                     f"{row['valid']['perplexity']:.4f} | {row['test']['perplexity']:.4f} | "
                     f"{row['test']['accuracy']:.4f} | {row['test']['top5_accuracy']:.4f} |")
    if result["comparison"]:
        c = result["comparison"]
        lines += ["", f"Speed-up valid + test: {c['speedup_valid_plus_test']:.2f}x wall, "
                      f"{c['speedup_valid_plus_test_cpu']:.2f}x CPU; perplexity relative difference: valid "
                      f"{c['perplexity_relative_difference']['valid']:.2e}, test "
                      f"{c['perplexity_relative_difference']['test']:.2e}."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/wikitext-2", help="folder with train/valid/test.txt")
    parser.add_argument("--preset", default="speedrun", help="the model's shape")
    parser.add_argument("--max-vocabulary-size", type=int, default=0, help="0 = every training word")
    parser.add_argument("--train-steps", type=int, default=200, help="training steps before evaluating")
    parser.add_argument("--tokens", type=int, default=0, help="evaluate the first N tokens of each split (0 = all)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), help="default: what `train` uses")
    parser.add_argument("--compare", action="append", default=[], help="another lstmlm src/ tree to time first")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tree, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each evaluation (0 = default)")
    parser.add_argument("--out", help="write the result as JSON here (and Markdown beside it)")
    parser.add_argument("--quick", action="store_true", help="seconds: synthetic corpus, tiny model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.precision, args.threads)))
        return 0
    if args.quick:
        args.train_steps, args.tokens, args.repeats = min(args.train_steps, 20), 0, 1
    result = run(args, log=lambda line: print(line, file=sys.stderr, flush=True))
    text = markdown(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
