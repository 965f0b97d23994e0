"""Honest perplexity: mean cross-entropy in nats over every token of a text, perplexity = exp(that).

The text is read as one stream with the LSTM state carried from chunk to chunk (the truncated-BPTT way), so
the result does not depend on the chunk length. The text is preceded by `<eos>` (a file starts at a sentence
boundary), so every one of its tokens is predicted and counted: PTB test = 82,430 tokens.

With `evaluation_batch_size` > 1 the text is cut into that many parallel streams (faster); each stream but the
first then starts from a zero state, which changes the result slightly. The tokens left over by the cut are
scored too, continuing the last stream's state, so the token count is the same.

Loss and perplexity are per token, so they compare only between runs of one tokenizer. `evaluate` adds the
numbers that compare across tokenizers (metrics.comparable): bits per character (total nats / ln 2 / characters
of the text, newlines counted) and word perplexity (exp of total nats / whitespace words, newlines counted as
`<eos>` words; for the word tokenizer, its perplexity).
"""

import time

import numpy as np
from keras import ops

from lstmlm import torch_backend
from lstmlm.metrics import perplexity
from lstmlm.data.tokenizer import EOS


def _scores(features, kernel, bias, targets):
    """Summed negative log-probability, top-1 and top-5 hits of the logits features @ kernel + bias
    ((batch, time, vocab)) against (batch, time) targets: a full softmax layer applied here."""
    if torch_backend.is_torch():
        return torch_backend.scores(features, kernel, bias, targets)  # blockwise, no full float32 logits
    return _logit_scores(torch_backend.dense(features, kernel, bias), targets)


def _logit_scores(logits, targets):
    """The same sums for (batch, time, vocab) logits already computed (or normalised log-probabilities: the
    adaptive softmax; a step model's own product)."""
    logits = ops.cast(logits, "float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    target_log_probs = ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1)[..., 0]
    top5 = ops.top_k(logits, k=min(5, logits.shape[-1]), sorted=True)[1]  # (batch, time, 5)
    hits = ops.equal(top5, ops.expand_dims(targets, -1))
    return (-float(ops.sum(target_log_probs)), float(ops.sum(ops.cast(hits[..., 0], "float32"))),
            float(ops.sum(ops.cast(ops.any(hits, axis=-1), "float32"))))


def _run_stream(model, inputs, targets, states, chunk_length, totals):
    """inputs, targets: (batch, length) numpy; adds to totals; returns the final states.

    `model` is an LSTMLanguageModel (training's validation) or a step model (step_model.py: inference in the
    precision chosen for it)."""
    adaptive = model.softmax == "adaptive"  # an LSTMLanguageModel and both step models say which softmax
    for start in range(0, inputs.shape[1], chunk_length):
        y = ops.convert_to_tensor(targets[:, start:start + chunk_length], dtype="int32")
        if not hasattr(model, "call_with_states"):  # a step model: its own precision and products
            outputs, states = model.advance(inputs[:, start:start + chunk_length], states)
            if adaptive:  # the layer's own sums: each tail cluster only where it is needed
                scores = model.adaptive_scores(outputs, y)
            else:
                scores = _logit_scores(ops.convert_to_tensor(model.logits(outputs)), y)
        else:  # the softmax layer applied here: the adaptive layer's own sums, or the full one blockwise
            x = ops.convert_to_tensor(inputs[:, start:start + chunk_length], dtype="int32")
            features, states = model.call_with_states(x, states, training=False, features_only=True)
            scores = model.adaptive_scores(features, y) if adaptive else _scores(features, *model.softmax_layer(), y)
        for i, value in enumerate(scores):
            totals[i] += value
    return states


def evaluate_ids(model, ids, vocabulary=None, evaluation_batch_size=1, chunk_length=256, precision="float32"):
    """Score a text given as ids.

    Args:
        model: an LSTMLanguageModel (run under `precision`: training's autocast) or a step model (which has its
            own precision; `precision` is then ignored).
        ids: the text as ids (1-D).
        vocabulary: if given and it has `<eos>`, the text is preceded by `<eos>` so its first token is scored.
        evaluation_batch_size: parallel streams (1 = exact).
        chunk_length: time steps per forward call (does not change the result).
    Returns:
        dict with tokens, loss (nats), perplexity, accuracy, top5_accuracy, seconds.
    """
    ids = np.asarray(ids, dtype=np.int32)
    if vocabulary is not None and EOS in vocabulary.index:
        ids = np.concatenate([[vocabulary.index[EOS]], ids]).astype(np.int32)
    if len(ids) < 2:
        raise ValueError("need at least one token to score")
    started = time.perf_counter()
    totals = [0.0, 0.0, 0.0]
    batch_size = max(1, min(evaluation_batch_size, len(ids) - 1))
    length = (len(ids) - 1) // batch_size
    with torch_backend.no_grad(), torch_backend.precision_context(precision), torch_backend.cached_weights():
        inputs = ids[: batch_size * length].reshape(batch_size, length)
        targets = ids[1 : batch_size * length + 1].reshape(batch_size, length)
        states = _run_stream(model, inputs, targets, model.initial_states(batch_size), chunk_length, totals)
        rest = len(ids) - 1 - batch_size * length
        if rest:  # continue the last stream over the tokens the cut left over
            if hasattr(model, "call_with_states"):
                last_state = [(h[-1:], c[-1:]) for h, c in states]
            else:
                last_state = model.row(states, batch_size - 1)
            start = batch_size * length
            _run_stream(model, ids[None, start:start + rest], ids[None, start + 1:start + rest + 1], last_state,
                        chunk_length, totals)
    tokens = len(ids) - 1
    loss = totals[0] / tokens
    return {"tokens": tokens, "loss": loss, "perplexity": perplexity(loss), "accuracy": totals[1] / tokens,
            "top5_accuracy": totals[2] / tokens, "seconds": time.perf_counter() - started}


def evaluate(run, split="test", file=None, evaluation_batch_size=1, chunk_length=256, precision=None,
             step_model=None):
    """Evaluate a loaded run on a split of its own corpus (bundled) or on any text file.

    The corpus is re-read from its recorded source only when `split` is used; with `file`, only that file.

    Args:
        run: a loaded run (`lstmlm.run_directory.load_run`).
        split: "train", "valid" or "test" of the run's corpus (ignored when `file` is given).
        file: any UTF-8 text file instead of a split.
        evaluation_batch_size: parallel streams (1 = exact, the state carried over the whole text).
        chunk_length: time steps per forward call (does not change the result).
        precision: None = the run's saved precision, or auto/float32/bfloat16/int8 (the rule: precision.py).
        step_model: the step model to run (a LanguageModel passes its own); its precision overrides
            `precision` (in bfloat16 the Keras model runs instead, see below).
    Returns:
        {"split" (the split or the file's path), "tokens", "loss" (nats per token), "perplexity" (per token),
        "accuracy", "top5_accuracy", "seconds", "num_unknown_words" (the text's tokens, with repeats, read as
        <unk>), "bits_per_character", "word_perplexity", "characters", "words"}.
    """
    from lstmlm.data.corpus import encode_file, read_split, split_statistics, text_statistics
    from lstmlm.metrics import comparable
    from lstmlm.precision import inference_precision
    from lstmlm.inference.step_model import make_step_model

    coder = getattr(run, "tokenizer", None) or run.vocabulary  # a RunDirectory made by hand may have no tokenizer
    if file is not None:
        (ids, num_unknown), name = encode_file(file, coder, run.config.lowercase), str(file)
        characters, words = text_statistics(file)
    else:
        (ids, num_unknown), name = read_split(run.config, split, coder), split
        characters, words = split_statistics(run.config, split)
    chosen = step_model.precision if step_model is not None else inference_precision(precision, run.config.precision)
    if chosen == "bfloat16" and torch_backend.is_torch():
        # A whole text in bfloat16: the Keras model under autocast (training's validation path: torch's fused LSTM
        # over each chunk, the blockwise softmax) is 3-4x faster than the step model's per-word cell loop, which
        # is built for batch-1 prediction (measured in docs/benchmarks.md); the same bfloat16 products. No step
        # model is built for it.
        model, autocast = run.model, "bfloat16"
    else:
        model, autocast = (step_model if step_model is not None else make_step_model(run.model, chosen)), "float32"
    result = evaluate_ids(model, ids, run.vocabulary, evaluation_batch_size, chunk_length, precision=autocast)
    return {"split": name, **result, "num_unknown_words": num_unknown,
            **comparable(result, characters, words, run.config.tokenizer), "characters": characters, "words": words}
