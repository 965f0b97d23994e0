#!/usr/bin/env python
"""Training speed: lstmlm's real step against plain PyTorch (float32 and bfloat16 autocast) and the tutorial's
Keras code, in tokens/s, and the peak memory of each.

    python benchmarks/throughput.py --threads 1                 # tutorial + small, writes docs/benchmarks-latest.*
    python benchmarks/throughput.py --threads 1 --profile       # also torch.profiler's top ops of each step
    python benchmarks/throughput.py --quick --out /tmp/bq       # < 60 s: small only; exit 1 below --min-ratio

Variants, each on the same batches (random ids, Zipf over 10,000 words, batch 20, the preset's num_steps):
  lstmlm           one batch through lstmlm's public epoch loop (Trainer, train_epoch, train_step, EpochProgress),
                   at the precision `train` picks (`auto`: bfloat16 where the CPU has it);
  lstmlm float32   the same at float32 (only where `auto` is bfloat16);
  pytorch          plain PyTorch (reference_pytorch.py), float32;
  pytorch bf16     the same under bfloat16 autocast (only where bfloat16 is native);
  keras tutorial   the tutorial's own Keras model and train_on_batch (reference_keras_tutorial.py; tutorial only).

Timing: after warm-up steps, each round runs one step of every variant (in a new random order each round), so a
variant's steps are spread over the whole run and no variant always follows the same one. Each step's wall time and process CPU time are recorded.
On a shared machine CPU time at --threads 1 is the stable figure (wall time counts the time other processes
held the core); ratios are the median over rounds of the per-round ratio, so a slow moment hits both sides.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

VOCABULARY = 10000
BATCH = 20
SEED = 1234

# The fields the plain-PyTorch reference needs, copied from lstmlm's presets so that a process timing the
# reference alone (the memory measurement) never imports Keras; `check_light_configs` asserts they still match.
LIGHT_CONFIGS = {
    "tutorial": dict(hidden_size=500, embedding_size=0, num_layers=2, num_steps=30, dropout=0.5, init_scale=0.0,
                     optimizer="adam", learning_rate=0.001, clip_norm=0.0, batching="window", seed=1,
                     sum_over_time=False),
    "small": dict(hidden_size=200, embedding_size=0, num_layers=2, num_steps=20, dropout=0.0, init_scale=0.1,
                  optimizer="sgd", learning_rate=1.0, clip_norm=5.0, batching="stream", seed=1,
                  sum_over_time=True),
}


def zipf_batches(count, batch, num_steps, vocabulary=VOCABULARY, seed=SEED):
    """`count` (x, y) pairs of (batch, num_steps) int64 ids drawn from Zipf(s=1) over the vocabulary
    (id 0 most frequent), y = x shifted by one: random text whose unigram distribution can be learned."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocabulary + 1)
    ids = rng.choice(vocabulary, size=(count, batch, num_steps + 1), p=p / p.sum())
    return [(b[:, :-1].copy(), b[:, 1:].copy()) for b in ids]


def light_config(name):
    import types

    return types.SimpleNamespace(**LIGHT_CONFIGS[name])


def check_light_configs():
    from lstmlm.presets import preset

    for name, fields in LIGHT_CONFIGS.items():
        config = preset(name)
        different = {k: (v, getattr(config, k)) for k, v in fields.items() if getattr(config, k) != v}
        if different:
            raise RuntimeError(f"LIGHT_CONFIGS[{name!r}] differs from the preset: {different}")


def bfloat16_native():
    from lstmlm.machine import cpu_info

    return cpu_info()["bfloat16"]


# ---- the variants ----------------------------------------------------------------------------------------
class LstmlmStep:
    """One batch through lstmlm's own epoch loop: `train_epoch` (dropout seeds, learning rate, train_step, the
    detached state carried in stream batching, the EpochProgress sums), stopped after that batch."""

    def __init__(self, config_name, precision="auto", compiled=False):
        import keras

        from lstmlm import torch_backend

        from lstmlm.precision import resolve_precision
        from lstmlm.model.lstm_language_model import build_model
        from lstmlm.presets import preset
        from lstmlm.training.epoch import Epoch
        from lstmlm.training.trainer import Trainer

        self.config = preset(config_name, precision=precision)
        keras.utils.set_random_seed(self.config.seed)
        self.precision = resolve_precision(self.config.precision)
        self.trainer = Trainer(self.config, build_model(self.config, VOCABULARY), self.precision)
        carry = self.config.batching == "stream"
        self.progress = Epoch(1, self.trainer.device,
                                      states=self.trainer.model.initial_states(BATCH) if carry else None)
        self.batches = []  # the epoch so far: train_epoch runs from progress.batches_done on
        self.name = "lstmlm" if precision == "auto" else f"lstmlm {precision}"
        if compiled:  # torch.compile of the model's forward call (the loss is lstmlm's own one-pass function)
            import torch

            self.trainer.forward = torch.compile(self.trainer.forward)
            self.name += " compiled"

    def step(self, x, y):
        from lstmlm.training.epoch import train_epoch

        self.batches.append((x, y))
        before = self.progress.loss.item()
        train_epoch(self.trainer, self.batches, self.progress, lambda index: self.config.learning_rate,
                    should_stop=lambda progress: True)
        if not self.trainer.last_step_finite:  # skipped by train_epoch: a nan/inf loss or gradient
            return float("nan")
        return (self.progress.loss.item() - before) / x.size  # this batch's mean loss


class TorchStep:
    """Plain PyTorch (benchmarks/reference_pytorch.py), the state carried where lstmlm carries it."""

    def __init__(self, config_name, precision="float32", compiled=False):
        import torch

        import reference_pytorch

        self.config, self.precision = light_config(config_name), precision
        torch.manual_seed(self.config.seed)
        self.model = reference_pytorch.build(self.config, VOCABULARY).train()
        self.optimizer = reference_pytorch.make_optimizer(self.config, self.model)
        self.carry = self.config.batching == "stream"
        self.state = None
        self.name = {"float32": "pytorch", "bfloat16": "pytorch bf16",
                     "bfloat16-float32-lstm": "pytorch bf16, LSTM float32"}[precision]
        # torch.compile of the forward pass and the loss (inductor also builds their backward): the candidate
        # the issue names; compiled on the first (warm-up) step, which needs a C++ compiler
        self.forward = torch.compile(reference_pytorch.forward_loss) if compiled else reference_pytorch.forward_loss
        if compiled:
            self.name += " compiled"

    def step(self, x, y):
        import torch

        import reference_pytorch

        loss, state = reference_pytorch.train_step(self.model, self.optimizer, torch.from_numpy(x),
                                                   torch.from_numpy(y), self.state, self.config.clip_norm,
                                                   self.config.sum_over_time, self.precision, self.forward)
        if self.carry:
            self.state = tuple(s.detach() for s in state)
        return float(loss)


class KerasTutorialStep:
    name = "keras tutorial"
    precision = "float32"

    def __init__(self, config_name):
        import keras

        import reference_keras_tutorial
        from lstmlm.presets import preset

        self.config = preset(config_name)
        keras.utils.set_random_seed(self.config.seed)
        self.model = reference_keras_tutorial.build(VOCABULARY, self.config.hidden_size, self.config.num_steps,
                                                    dropout=self.config.dropout)

    def step(self, x, y):
        import reference_keras_tutorial

        return reference_keras_tutorial.train_step(self.model, x, y, VOCABULARY)


def make_step(kind, config_name):
    makers = {"lstmlm": lambda: LstmlmStep(config_name),
              "lstmlm-float32": lambda: LstmlmStep(config_name, "float32"),
              "pytorch": lambda: TorchStep(config_name),
              "pytorch-bf16": lambda: TorchStep(config_name, "bfloat16"),
              # bfloat16 with the LSTM in float32: what lstmlm does with Adam (precision.training_lstm_precision)
              "pytorch-bf16-float32-lstm": lambda: TorchStep(config_name, "bfloat16-float32-lstm"),
              # opt-in (--variants): torch.compile, each compiled in its first warm-up step
              "lstmlm-compiled": lambda: LstmlmStep(config_name, compiled=True),
              "pytorch-compiled": lambda: TorchStep(config_name, compiled=True),
              "pytorch-bf16-compiled": lambda: TorchStep(config_name, "bfloat16", compiled=True),
              "keras-tutorial": lambda: KerasTutorialStep(config_name)}
    return makers[kind]()


def variants(config_name, full=True):
    """The variants this machine can run: the bfloat16 ones only where bfloat16 is native."""
    from lstmlm.precision import ADAPTIVE_OPTIMIZERS

    kinds = ["lstmlm"]
    if bfloat16_native():
        kinds += ["lstmlm-float32", "pytorch", "pytorch-bf16"]
        if LIGHT_CONFIGS[config_name]["optimizer"] in ADAPTIVE_OPTIMIZERS:
            kinds.append("pytorch-bf16-float32-lstm")
    else:
        kinds += ["pytorch"]
    if full and config_name == "tutorial":
        kinds.append("keras-tutorial")
    return kinds


# The plain-PyTorch variants every other variant's speed is given against (in the JSON and the report's columns)
PYTORCH_REFERENCES = ("pytorch", "pytorch-bf16", "pytorch-bf16-float32-lstm", "pytorch-bf16-compiled")


# ---- timing --------------------------------------------------------------------------------------------
def time_training(config_name, kinds, warmup, rounds, log=print):
    """Warm-up steps for every variant, then `rounds` rounds of one timed step per variant (in a random order
    each round: a fixed order would let one variant always run right after the same other one, whose weights
    fill the caches); every variant sees the same batches in the same order."""
    check_light_configs()
    num_steps = LIGHT_CONFIGS[config_name]["num_steps"]
    batches = zipf_batches(warmup + rounds, BATCH, num_steps)
    steps = {kind: make_step(kind, config_name) for kind in kinds}
    records = {kind: {"losses": [], "wall": [], "cpu": []} for kind in kinds}
    for kind, step in steps.items():
        for x, y in batches[:warmup]:
            records[kind]["losses"].append(step.step(x, y))
    rng = np.random.default_rng(SEED)
    for r in range(rounds):
        x, y = batches[warmup + r]
        for kind in rng.permutation(kinds):  # a new order each round: no variant always follows the same one
            wall, cpu = time.perf_counter(), time.process_time()
            loss = steps[kind].step(x, y)
            records[kind]["wall"].append(time.perf_counter() - wall)
            records[kind]["cpu"].append(time.process_time() - cpu)
            records[kind]["losses"].append(loss)
        if (r + 1) % max(1, rounds // 4) == 0 or r + 1 == rounds:
            log(f"  {config_name}: round {r + 1}/{rounds}: " + ", ".join(
                f"{kind} {1000 * records[kind]['cpu'][-1]:.0f} ms" for kind in kinds))
    tokens = BATCH * num_steps
    out = {}
    for kind in kinds:
        row = records[kind]
        wall, cpu = statistics.median(row["wall"]), statistics.median(row["cpu"])
        out[kind] = {"variant": steps[kind].name, "precision": steps[kind].precision, "timed_steps": rounds,
                     "wall_ms": round(1000 * wall, 2), "cpu_ms": round(1000 * cpu, 2),
                     "tokens_per_second_wall": round(tokens / wall, 1), "tokens_per_second_cpu": round(tokens / cpu, 1),
                     "loss_first_step": round(row["losses"][0], 4), "loss_last_step": round(row["losses"][-1], 4),
                     "wall_ms_steps": [round(1000 * v, 2) for v in row["wall"]],
                     "cpu_ms_steps": [round(1000 * v, 2) for v in row["cpu"]]}
    for reference in (*PYTORCH_REFERENCES, "lstmlm-float32"):
        if reference not in records:
            continue
        for kind in kinds:
            for clock in ("wall", "cpu"):
                ratios = [b / a for a, b in zip(records[kind][clock], records[reference][clock])]
                out[kind][f"speed_vs_{reference}_{clock}"] = round(statistics.median(ratios), 3)
    return {"config": config_name, "tokens_per_step": tokens, "batch_size": BATCH, "num_steps": num_steps,
            "warmup_steps": warmup, "fields": LIGHT_CONFIGS[config_name], "variants": out}


# ---- environment ---------------------------------------------------------------------------------------
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def environment():
    import keras
    import torch

    from lstmlm import torch_backend

    from lstmlm.precision import resolve_precision
    from lstmlm.machine import cpu_info

    return {"cpu": cpu_info(), "torch": torch.__version__, "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "python": sys.version.split()[0],
            "threads": torch.get_num_threads(), "precision_auto": resolve_precision("auto"),
            "load_average_start": [round(v, 2) for v in os.getloadavg()],
            # the widest vector ISA torch's own kernels dispatch to, and the caps the environment set on the three
            # kernel libraries (ATen, oneDNN, MKL): an AVX2-only run on an AVX-512 machine is recorded as such
            "kernel_isa": {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           **{name: os.environ[name] for name in ISA_VARIABLES if name in os.environ}}}


# ---- modes ---------------------------------------------------------------------------------------------
def run_quick(warmup=2, rounds=4, log=print):
    """The CI smoke check: small config, lstmlm against plain PyTorch at lstmlm's precision (and float32)."""
    env = environment()
    kinds = ["lstmlm", "pytorch"] + (["pytorch-bf16"] if bfloat16_native() else [])
    training = time_training("small", kinds, warmup, rounds, log=log)
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    reference = "pytorch-bf16" if training["variants"]["lstmlm"]["precision"] == "bfloat16" else "pytorch"
    return {"mode": "quick", "environment": env, "training": {"small": training},
            "same_precision_reference": reference,
            "ratio_lstmlm_to_same_precision": training["variants"]["lstmlm"][f"speed_vs_{reference}_cpu"]}


def run_full(args, log=print):
    env = environment()
    started = time.perf_counter()
    result = {"mode": "full", "environment": env, "note": args.note, "training": {}}
    if args.memory_steps:  # first, while this process is small
        kinds = args.variants.split(",") if args.variants else variants("tutorial")
        from step_memory_profile import memory_benchmark

        result["memory"] = memory_benchmark(kinds, "tutorial", args.memory_steps, args.threads, log=log)
    for config_name, rounds in (("tutorial", args.rounds), ("small", args.rounds_small)):
        kinds = variants(config_name) if not args.variants else [
            kind for kind in args.variants.split(",") if kind != "keras-tutorial" or config_name == "tutorial"]
        result["training"][config_name] = time_training(config_name, kinds, args.warmup, rounds, log=log)
    if args.profile:
        log("  profiler")
        pairs = [("lstmlm", "pytorch-bf16" if bfloat16_native() else "pytorch")]
        if bfloat16_native():
            pairs.append(("lstmlm-float32", "pytorch"))
        from step_memory_profile import profile_training

        result["profile"] = {f"{kind} {config}": profile_training(kind, config, steps=args.profile_steps)
                             for config in ("tutorial", "small") for pair in pairs for kind in pair}
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# ---- output --------------------------------------------------------------------------------------------
def markdown(result):
    env = result["environment"]
    cpu = env["cpu"]
    lines = [f"# lstmlm training throughput ({result['mode']} run)", "",
             f"CPU {cpu['model']} ({cpu['cores']} cores; flags: {' '.join(cpu['flags']) or 'none of note'}), "
             f"torch threads {env['threads']}; torch {env['torch']}, keras {env['keras']} ({env['keras_backend']}), "
             f"python {env['python']}; precision auto = {env['precision_auto']}; load average "
             f"{env['load_average_start']} at start, {env.get('load_average_end')} at end. Kernels: "
             + ", ".join(f"{k} {v}" for k, v in env.get("kernel_isa", {}).items()) + ".", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    for config_name, block in result["training"].items():
        variants_ = block["variants"]
        references = [r for r in PYTORCH_REFERENCES if f"speed_vs_{r}_cpu" in next(iter(variants_.values()))]
        fields = block["fields"]
        lines += [f"## Training, {config_name} config ({fields['hidden_size']}x{fields['num_layers']}, "
                  f"{block['num_steps']} steps, batch {block['batch_size']}, {fields['optimizer']}, clip "
                  f"{fields['clip_norm']}, dropout {fields['dropout']}, {fields['batching']} batching), median of "
                  f"{next(iter(variants_.values()))['timed_steps']} interleaved steps", "",
                  "| variant | precision | CPU ms/step | tokens/s (CPU) | wall ms/step | " +
                  " | ".join(f"speed vs {r.replace('-', ' ')} (CPU; wall)" for r in references) +
                  " | loss first → last step |",
                  "|---|---|---|---|---|" + "---|" * len(references) + "---|"]
        for row in variants_.values():
            ratios = " | ".join(f"{row[f'speed_vs_{r}_cpu']:.2f}x; {row[f'speed_vs_{r}_wall']:.2f}x"
                                for r in references)
            lines.append(f"| {row['variant']} | {row['precision']} | {row['cpu_ms']:.1f} | "
                         f"{row['tokens_per_second_cpu']:,.0f} | {row['wall_ms']:.1f} | {ratios} | "
                         f"{row['loss_first_step']:.3f} → {row['loss_last_step']:.3f} |")
        lines.append("")
    if "memory" in result:
        lines += ["## Peak memory, tutorial-config training (fresh process each)", "",
                  "| variant | peak RSS after imports MB | peak RSS MB (VmHWM) |", "|---|---|---|"]
        for kind, row in result["memory"].items():
            if "error" in row:
                lines.append(f"| {kind} | error: {row['error']} | |")
            else:
                lines.append(f"| {row['variant']} | {row['peak_rss_after_imports_mb']:.0f} | {row['peak_rss_mb']:.0f} |")
        lines.append("")
    for name, prof in result.get("profile", {}).items():
        lines += [f"## Profile: {name} ({prof['self_cpu_ms_per_step']:.0f} ms self CPU per step)", "",
                  "| op | calls/step | self CPU ms/step | share |", "|---|---|---|---|"]
        for row in prof["top"]:
            lines.append(f"| {row['op']} | {row['calls_per_step']:g} | {row['self_cpu_ms_per_step']:.2f} | "
                         f"{row['share']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def write(result, prefix):
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{prefix}.json"), Path(f"{prefix}.md")
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result) + "\n", encoding="utf-8")
    return json_path, md_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/benchmarks-latest", help="output path prefix (.json and .md)")
    parser.add_argument("--quick", action="store_true", help="CI smoke check: small config, < 60 s")
    parser.add_argument("--min-ratio", type=float, default=0.5,
                        help="--quick fails if lstmlm's tokens/s < this x plain PyTorch at the same precision")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds, tutorial config")
    parser.add_argument("--rounds-small", type=int, default=30, help="timed rounds, small config")
    parser.add_argument("--memory-steps", type=int, default=4,
                        help="training steps in each peak-memory subprocess (0 = skip the memory measurement)")
    parser.add_argument("--variants", help="comma-separated subset of lstmlm, lstmlm-float32, pytorch, pytorch-bf16, "
                        "pytorch-bf16-float32-lstm, "
                        "keras-tutorial (default: all this CPU runs natively), and the torch.compile ones: "
                        "lstmlm-compiled, pytorch-compiled, pytorch-bf16-compiled")
    parser.add_argument("--profile", action="store_true", help="also torch.profiler's top ops of each step")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="tutorial", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.environ["KERAS_BACKEND"] != "torch":
        parser.error(f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}; this benchmark needs 'torch'")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        from step_memory_profile import memory_child

        print(json.dumps(memory_child(args.memory_child, args.config, args.memory_steps)))
        return 0

    def log(line):
        print(line, file=sys.stderr, flush=True)

    result = run_quick(log=log) if args.quick else run_full(args, log=log)
    json_path, md_path = write(result, args.out)
    log(f"wrote {json_path} and {md_path}")
    print(markdown(result))
    if args.quick:
        ratio, reference = result["ratio_lstmlm_to_same_precision"], result["same_precision_reference"]
        verdict = "FAIL" if ratio < args.min_ratio else "ok"
        log(f"{verdict}: lstmlm trains at {ratio:.2f}x {reference} (CPU time; bound {args.min_ratio})")
        return 1 if ratio < args.min_ratio else 0
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
