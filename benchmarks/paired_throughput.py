#!/usr/bin/env python
"""A paired A/B of lstmlm's training speed between two checkouts (say, before and after a refactor).

    git worktree add /tmp/before <commit>
    python benchmarks/paired_throughput.py --before /tmp/before --after . --pairs 3 --threads 2 \\
        --out docs/runs/refactor-ab

Each pair runs `benchmarks/throughput.py` of the `before` checkout, then of the `after` checkout (the order
alternates pair by pair), each in its own process with its own `src` first on PYTHONPATH. Within one run
throughput.py times lstmlm's step and plain PyTorch's on the same batches, interleaved round by round, so the
figure compared here is lstmlm's speed *relative to plain PyTorch in the same process* (the median over rounds of
the per-round ratio): it cancels the machine's drift between runs. Tokens/s are reported beside it.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit_of(checkout):
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "src", "benchmarks"],
                           capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + ("+dirty" if dirty else "")


def run_throughput(checkout, variants, threads, rounds, rounds_small, out):
    """One throughput.py run of `checkout`; its JSON."""
    checkout = Path(checkout).resolve()
    environment = {**os.environ, "PYTHONPATH": str(checkout / "src"), "KERAS_BACKEND": "torch"}
    command = [sys.executable, str(checkout / "benchmarks" / "throughput.py"), "--variants", variants, "--threads",
               str(threads), "--rounds", str(rounds), "--rounds-small", str(rounds_small), "--memory-steps", "0",
               "--out", str(out)]
    subprocess.run(command, env=environment, check=True, capture_output=True, text=True)
    return json.loads(Path(f"{out}.json").read_text())


def figures(result, reference):
    """{config: {"ratio": lstmlm's speed vs `reference` (CPU), "tokens_per_second": lstmlm's (CPU)}}."""
    return {name: {"ratio": block["variants"]["lstmlm"][f"speed_vs_{reference}_cpu"],
                   "tokens_per_second": block["variants"]["lstmlm"]["tokens_per_second_cpu"]}
            for name, block in result["training"].items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout A (its src/ and benchmarks/ are used)")
    parser.add_argument("--after", default=str(HERE.parent), help="checkout B")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds, tutorial config")
    parser.add_argument("--rounds-small", type=int, default=25, help="timed rounds, small config")
    parser.add_argument("--variants", default="lstmlm,pytorch", help="throughput.py variants (lstmlm and the reference)")
    parser.add_argument("--reference", default="pytorch", help="the variant lstmlm's speed is divided by")
    parser.add_argument("--out", required=True, help="output path prefix (.json and .md)")
    args = parser.parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    runs = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as folder:
        for pair in range(args.pairs):
            order = ("before", "after") if pair % 2 == 0 else ("after", "before")
            for side in order:
                result = run_throughput(getattr(args, side), args.variants, args.threads, args.rounds,
                                        args.rounds_small, Path(folder) / f"{side}-{pair}")
                runs[side].append({"figures": figures(result, args.reference),
                                   "load_average": result["environment"]["load_average_start"]})
                print(f"pair {pair + 1} {side}: {runs[side][-1]['figures']}", flush=True)
        cpu = result["environment"]["cpu"]
    configs = list(runs["before"][0]["figures"])
    summary = {name: {side: {key: statistics.median(run["figures"][name][key] for run in runs[side])
                             for key in ("ratio", "tokens_per_second")} for side in runs} for name in configs}
    record = {"command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/paired_throughput.py",
                                                            *(sys.argv[1:] if argv is None else argv)]),
              "before": commit_of(args.before), "after": commit_of(args.after), "cpu": cpu,
              "threads": args.threads, "load_average_start": load_start,
              "load_average_end": [round(v, 2) for v in os.getloadavg()], "runs": runs, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Paired training-speed A/B\n", f"Command: `{record['command']}`  ",
             f"Before {record['before']}, after {record['after']}; {cpu['model']} ({' '.join(cpu['flags'])}), "
             f"{args.threads} threads; load average {load_start} at the start, {record['load_average_end']} at the "
             f"end.\n", f"Medians over {args.pairs} runs of each side (order alternating); lstmlm's speed relative "
             f"to {args.reference} in the same process (CPU time), and lstmlm's tokens/s:\n",
             "| config | before: ratio | after: ratio | after / before | before: tokens/s | after: tokens/s |",
             "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['before']['ratio']:.3f} | {row['after']['ratio']:.3f} | "
                     f"{row['after']['ratio'] / row['before']['ratio']:.3f} | "
                     f"{row['before']['tokens_per_second']:,.0f} | {row['after']['tokens_per_second']:,.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
