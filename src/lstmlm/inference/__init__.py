"""The inference stage: a run directory in, predictions, generations, scores and evaluations out.

Owns the loaded model users call (language_model.py: `load`, LanguageModel), the one-word-at-a-time step model
in float32, bfloat16 or int8 (step_model.py, bfloat16.py, quantization.py), the prefix-state cache, the
samplers, exact evaluation (evaluate.py) and the ONNX export. Reads only the run directory, never training data.
May import data (tokenizing a prompt), model and the shared top-level modules; never training or serving.
"""
