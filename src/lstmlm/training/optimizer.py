"""Optimizers over the Keras model's variables, using torch's fused implementations where they exist
(one kernel for the whole parameter list instead of a loop of small ops), and their state as plain arrays
(`.npz`, no pickle) for resuming.

Adam uses Keras' default epsilon (1e-7), so `--optimizer adam --learning-rate 0.001` is the tutorial's
`optimizer='adam'`.
"""

import numpy as np


def make_optimizer(config, parameters):
    import torch

    name = config.optimizer
    if name == "sgd":
        make, kwargs = torch.optim.SGD, {"weight_decay": config.weight_decay}
    elif name == "adam":
        make, kwargs = torch.optim.Adam, {"eps": 1e-7, "weight_decay": config.weight_decay}
    elif name == "adamw":
        make, kwargs = torch.optim.AdamW, {"eps": 1e-7, "weight_decay": config.weight_decay}
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    try:
        optimizer = make(parameters, lr=config.learning_rate, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / dtype
        return make(parameters, lr=config.learning_rate, foreach=True, **kwargs)
    column_major = [p for p in optimizer.param_groups[0]["params"] if p.dim() == 2 and not p.is_contiguous()
                    and p.t().is_contiguous()]
    if column_major:
        optimizer.step = _in_memory_order(optimizer, optimizer.step, column_major)
    return optimizer


def _in_memory_order(optimizer, step, column_major):
    """`step` with each column-major parameter (torch_backend.transposed_storage), its gradient and its state
    seen as their transposes for the duration: the same memory, now contiguous. Torch's fused CPU kernels walk
    the four tensors in memory order (correct for any common layout) but first make a contiguous copy of a
    non-contiguous gradient that they then do not use: at tutorial size that wasted copy of five transposed
    gradients cost ~20 ms a step, 7-10%."""
    import torch

    def transposed():
        for parameter in column_major:
            if parameter.grad is None:
                continue
            gradient = parameter.grad.t()
            parameter.data = parameter.data.t()  # shape (out, in) while the step runs
            parameter.grad = gradient
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() == 2:
                    state[key] = value.t()

    def step_in_memory_order(*args, **kwargs):
        transposed()
        try:
            return step(*args, **kwargs)  # new state (zeros_like the parameter) is made in the same order
        finally:
            transposed()  # back to the Keras shapes

    return step_in_memory_order


def optimizer_state(optimizer):
    """(arrays for np.savez, JSON-able parameter groups)."""
    state_dict = optimizer.state_dict()
    arrays = {f"{index}.{key}": value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
              for index, values in state_dict["state"].items() for key, value in values.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in state_dict["param_groups"]]
    return arrays, groups


def load_optimizer_state(optimizer, arrays, groups):
    import torch

    state = {}
    for name, value in arrays.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = torch.as_tensor(value)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in group.items()} for group in groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # A fused optimizer walks a parameter, its gradient and its state in memory order, so the state must have
    # the parameter's strides (the LSTM kernels are stored column-major: torch_backend.transposed_storage);
    # arrays read from a file are row-major.
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                    optimizer.state[parameter][key] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
