"""The trained model as users call it: next-word prediction, generation, scoring and evaluation.

`load(run_dir)` reads only the run directory. A prompt is split into words like the corpus (whitespace),
each word is looked up as written, then lower-cased, then without surrounding punctuation; what is still not
found becomes `<unk>` and is reported. Every prompt is preceded by `<eos>`: the model starts it as a sentence.
"""

import string
import warnings

import numpy as np
from keras import ops

from lstmlm import torch_backend
from lstmlm.errors import LstmlmError
from lstmlm.metrics import perplexity
from lstmlm.run_directory import load_run
from lstmlm.samplers import make_sampler, softmax
from lstmlm.tokenizer import EOS, UNK, split_words

DEFAULT_NUM_WORDS = 30  # words `generate` adds when not told: the CLI, the API, the server and the web page


class LanguageModel:
    """A loaded run directory.

    Example:
        >>> model = load("runs/ptb-small")                          # doctest: +SKIP
        >>> model.predict_next("the stock market", top_k=3)       # doctest: +SKIP
        {'predictions': [{'word': 'is', 'probability': 0.09}, ...], 'unknown_words': []}
    """

    def __init__(self, run):
        self.run = run
        self.model = run.model
        self.vocabulary = run.vocabulary
        self.config = run.config
        self.eos_id = self.vocabulary.index.get(EOS)
        # The weights are fixed after loading, so their torch-layout copies are made once and kept (a user who
        # changes self.model's weights must call refresh()).
        self._weight_copies = {}

    def refresh(self):
        """Forget the cached weight copies (after changing the model's weights)."""
        self._weight_copies = {}

    # ---- words <-> ids --------------------------------------------------------------------------------
    def lookup(self, word):
        index = self.vocabulary.index
        for candidate in (word, word.lower(), word.strip(string.punctuation).lower()):
            if candidate in index:
                return index[candidate], candidate
        return None, word

    def encode_prompt(self, text):
        """(ids including the leading <eos>, the prompt's words as looked up, unknown words)."""
        ids = [] if self.eos_id is None else [self.eos_id]
        words, unknown = [], []
        for word in split_words(text, self.config.lowercase):
            if word.strip(string.punctuation) == "" and word.lower() not in self.vocabulary.index:
                continue  # lone punctuation: the bundled corpora have none
            index, found = self.lookup(word)
            if index is None:
                unknown.append(word)
                index, found = self.vocabulary.unk_id, UNK
            ids.append(index)
            words.append(found)
        if not ids:
            ids = [self.vocabulary.unk_id]
        return ids, words, unknown

    # ---- model steps ----------------------------------------------------------------------------------
    def _forward(self, ids, states=None):
        """Logits of the last position (numpy float64) and the states after it."""
        with torch_backend.no_grad(), torch_backend.cached_weights(self._weight_copies):
            x = ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :])
            logits, states = self.model.call_with_states(x, states, training=False, last_only=True)
            return np.asarray(torch_backend.to_numpy(logits[0, -1]), dtype=np.float64), states

    def _all_logits(self, ids):
        with torch_backend.no_grad(), torch_backend.cached_weights(self._weight_copies):
            logits, _ = self.model.call_with_states(ops.convert_to_tensor(np.asarray(ids, dtype=np.int32)[None, :]))
            return np.asarray(torch_backend.to_numpy(logits[0]), dtype=np.float64)  # (time, vocab)

    # ---- the public verbs -----------------------------------------------------------------------------
    def predict_next(self, text, top_k=5):
        """The top_k most likely next words with probabilities, most likely first.

        Returns {"predictions": [{"word", "probability"}], "unknown_words": [the prompt's words read as <unk>]}.
        """
        if top_k <= 0:
            raise LstmlmError(f"--top-k must be positive, got {top_k}")
        ids, _, unknown = self.encode_prompt(text)
        probabilities = softmax(self._forward(ids)[0])
        top_k = min(top_k, len(probabilities))
        top = np.argpartition(-probabilities, top_k - 1)[:top_k]  # the k largest, then sorted
        top = top[np.argsort(-probabilities[top], kind="stable")]
        return {"predictions": [{"word": self.vocabulary.words[i], "probability": float(probabilities[i])}
                                for i in top],
                "unknown_words": unknown}

    def generate(self, prompt="", num_words=DEFAULT_NUM_WORDS, temperature=1.0, top_k=0, top_p=1.0, seed=None, *,
                 words=None):
        """Continue the prompt word by word, carrying the LSTM state (each step feeds one word).

        Returns {"prompt_words", "words", "text", "unknown_words"}: `words` are the num_words generated words,
        `text` the same with <eos> as newlines. `words=` is the deprecated name of `num_words`.
        """
        if words is not None:
            warnings.warn("generate(words=...) is deprecated; use num_words=", DeprecationWarning, stacklevel=2)
            num_words = words
        if num_words < 0:
            raise LstmlmError(f"--num-words must be >= 0, got {num_words}")
        try:
            sampler = make_sampler(temperature, top_k, top_p)
        except ValueError as error:
            raise LstmlmError(f"sampling: {error}") from None
        rng = np.random.default_rng(seed)
        ids, prompt_words, unknown = self.encode_prompt(prompt)
        out = []
        with torch_backend.cached_weights(self._weight_copies):
            logits, states = self._forward(ids)
            for _ in range(num_words):
                index = sampler(logits, rng)
                out.append(self.vocabulary.words[index])
                logits, states = self._forward([index], states)
        return {"prompt_words": prompt_words, "words": out, "text": join_words(out), "unknown_words": unknown}

    def score(self, text):
        """Log-probability (nats) of every word of `text` given the words before it (and a leading <eos>).

        Returns {"word_scores": [{"word", "log_probability"}], "total_log_probability", "tokens", "perplexity",
        "unknown_words"}.
        """
        ids, words, unknown = self.encode_prompt(text)
        if len(ids) < 2:
            raise LstmlmError("score: the text has no words")
        log_probs = self._all_logits(ids[:-1])
        log_probs = log_probs - np.logaddexp.reduce(log_probs, axis=-1, keepdims=True)
        values = [float(log_probs[t, ids[t + 1]]) for t in range(len(ids) - 1)]
        total = float(sum(values))
        return {"word_scores": [{"word": w, "log_probability": v} for w, v in zip(words, values)],
                "total_log_probability": total, "tokens": len(values),
                "perplexity": perplexity(-total / len(values)), "unknown_words": unknown}

    def evaluate(self, split="test", file=None, evaluation_batch_size=1, chunk_length=256):
        """`lstmlm.evaluate.evaluate` on this run: {"split", "tokens", "loss", "perplexity", "accuracy",
        "top5_accuracy", "seconds", "num_unknown_words"}."""
        from lstmlm.evaluate import evaluate

        return evaluate(self.run, split=split, file=file, evaluation_batch_size=evaluation_batch_size,
                        chunk_length=chunk_length)

    def actual_vs_predicted(self, ids, skip=40, count=10):
        """The tutorial's report: for windows of num_steps words starting at skip, skip+1, ..., the word that
        follows each window and the model's greedy guess for it (each window from a zero state, as the tutorial).
        """
        steps = self.config.num_steps
        if len(ids) < skip + steps + count:
            raise LstmlmError(f"--skip {skip} --count {count}: the text has only {len(ids)} tokens")
        actual, predicted = [], []
        for i in range(count):
            window = ids[skip + i : skip + i + steps]
            logits, _ = self._forward(window)
            predicted.append(self.vocabulary.words[int(np.argmax(logits))])
            actual.append(self.vocabulary.words[int(ids[skip + i + steps])])
        return {"actual": actual, "predicted": predicted}


def join_words(words):
    r"""The words as text: separated by spaces, each <eos> written as a newline (without spaces around it).

    Example:
        >>> join_words(["the", "cat", "<eos>", "a", "dog", "<eos>"])
        'the cat\na dog\n'
    """
    return " ".join(words).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(f"{EOS} ", "\n") \
        .replace(EOS, "\n")


def load(run_dir):
    """Load a run directory for prediction, generation, scoring and evaluation."""
    return LanguageModel(load_run(run_dir))
