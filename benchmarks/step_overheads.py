#!/usr/bin/env python
"""The costs inside a training step that plain PyTorch does not pay, each timed alone: the way lstmlm did it
before (as the profile of its step showed) against the way it does it now, at tutorial size (batch 20 x 30 steps,
500 units, 10,000 words), bfloat16 autocast where the CPU has it.

    python benchmarks/step_overheads.py --threads 1 [--calls 30] [--out docs/step-overheads.json]

  transposes   the LSTM kernels in Keras' (in, 4u) layout copied to torch's (4u, in) on every step, and their
               gradients copied back, against kernels stored in torch's memory order (torch_backend.transposed_storage)
  loss         logits.float() + torch's cross_entropy + the accuracy's amax, forward and backward, against
               torch_backend.cross_entropy (one blocked pass that also writes the gradient)
  dropout      keras.random.dropout (bernoulli, where, divide) against torch_backend.dropout (uniform < keep)
  layer calls  the four sublayers through Keras' __call__ against their call() (bookkeeping, dtype casts), on a
               tiny model (16 units, 50 words) so that the fixed cost is not lost in the arithmetic

Each pair runs interleaved for --calls rounds; the figure is the median CPU time of one call (forward + backward).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")


def pieces(precision):
    """{name: (before, after)}: functions running one forward + backward of each piece."""
    import keras
    import torch

    from lstmlm import torch_backend

    from lstmlm.precision import resolve_precision
    from lstmlm.model.lstm_language_model import build_model
    from lstmlm.presets import preset

    autocast = torch_backend.precision_context(precision)
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    kernels = [torch.nn.Parameter(torch.randn(500, 2000, generator=generator) * 0.05) for _ in range(4)]
    stored = [torch.nn.Parameter(k.detach().t().contiguous().t()) for k in kernels]  # transposed_storage's order

    def transposes(weights, copy):
        with autocast:
            ts = [w.t().contiguous() if copy else w.t() for w in weights]
            total = sum(t.to(dtype).float().sum() for t in ts)  # autocast's cast, as torch.lstm's input
        total.backward()
        return float(total.detach())

    logits = (torch.randn(600, 10000, generator=generator) * 3).to(dtype)
    targets = torch.randint(0, 10000, (600,), generator=generator)

    def loss_before():
        z = logits.detach().requires_grad_()
        flat = z.float()
        loss = torch.nn.functional.cross_entropy(flat, targets)
        loss.backward()
        with torch.no_grad():
            (flat.gather(1, targets[:, None])[:, 0] >= flat.amax(-1)).sum()
        return float(loss.detach())

    def loss_after():
        z = logits.detach().requires_grad_()
        loss = torch_backend.cross_entropy(z, targets)[0]
        loss.backward()
        return float(loss.detach())

    activations = torch.randn(20, 30, 500, generator=generator).to(dtype)
    seed = keras.random.SeedGenerator(1)

    def dropout(function):
        x = activations.detach().requires_grad_()
        total = function(x).float().sum()
        total.backward()
        return float(total.detach())

    # a tiny model, so that the fixed cost of Keras' __call__ (bookkeeping, dtype casts between layers) shows
    config = preset("tutorial", hidden_size=16, precision=precision)
    model = build_model(config, 50)
    ids = torch.randint(0, 50, (20, 30), generator=generator)

    def layers(through_call):
        with autocast:
            run = (lambda layer, *a, **k: layer(*a, **k)) if through_call else (
                lambda layer, *a, **k: layer.call(*a, **k))
            x = run(model.embedding, ids)
            for layer in model.lstm_layers:
                x, _ = run(layer, x, training=True)
            out = run(model.output_layer, x)
        total = out.float().sum()
        total.backward()
        return float(total.detach())

    # each returns a number of its result, so a test can check that before and after compute the same thing
    return {"transposes": (lambda: transposes(kernels, True), lambda: transposes(stored, False)),
            "loss": (loss_before, loss_after),
            "dropout": (lambda: dropout(lambda x: keras.random.dropout(x, 0.5, seed=seed)),
                        lambda: dropout(lambda x: torch_backend.dropout(x, 0.5, seed))),
            "layer calls": (lambda: layers(True), lambda: layers(False))}


def measure(calls, precision, log=print):
    out = {}
    for name, (before, after) in pieces(precision).items():
        before(), after()  # warm-up
        times = {"before": [], "after": []}
        for _ in range(calls):
            for key, function in (("before", before), ("after", after)):
                started = time.process_time()
                function()
                times[key].append(time.process_time() - started)
        out[name] = {key: round(1000 * statistics.median(values), 2) for key, values in times.items()}
        log(f"  {name}: before {out[name]['before']:.1f} ms, after {out[name]['after']:.1f} ms")
    return out


def main(argv=None):
    from lstmlm import torch_backend
    from lstmlm.precision import resolve_precision
    from lstmlm.machine import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="interleaved rounds per piece")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), help="default: what `train` uses")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or resolve_precision("auto")
    load = os.getloadavg()
    result = {"precision": precision, "threads": torch.get_num_threads(), "cpu": cpu_info(),
              "load_average_start": [round(v, 2) for v in load],
              "pieces_ms": measure(args.calls, precision, log=lambda line: print(line, file=sys.stderr))}
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(result, file, indent=2)
    print(f"| piece ({precision}, {result['threads']} threads, median CPU ms of one forward + backward) | before | "
          "after |\n|---|---|---|")
    for name, row in result["pieces_ms"].items():
        print(f"| {name} | {row['before']:.1f} | {row['after']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
