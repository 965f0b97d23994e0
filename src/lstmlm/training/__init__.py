"""The training stage: a Config and a corpus in, a run directory out.

Owns the epoch loop (loop.py), one optimisation step and its Trainer (trainer.py), one epoch and its running
sums (epoch.py), opening a new or resumed run (run.py), the coordinator that makes N data-parallel processes
read like one (coordinator.py over distributed.py), the optimizer, the learning-rate schedule, the time budget,
the checkpoint files, stop signals, the progress bar and TensorBoard logging. May import data, model, the
inference stage's evaluation (validation is evaluation) and the shared top-level modules; never serving.
"""
