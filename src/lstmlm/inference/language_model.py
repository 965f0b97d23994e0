"""The trained model as users call it: next-word prediction, generation, scoring and evaluation.

`load(run_dir, precision=None)` reads only the run directory. A word model's prompt is split into words like the
corpus (whitespace), each word is looked up as written, then lower-cased, then without surrounding punctuation;
what is still not found becomes `<unk>` and is reported. A char, byte or bpe model's prompt is encoded by its
tokenizer exactly as its corpus was (data/tokenizers.py); characters a char model never saw are `<unk>`, reported
as unknown (the documented fallback: the prompt still runs). Every prompt is preceded by `<eos>`: the model
starts it as a sentence.

The model's tokens are words or pieces of text. Results name a token by its text (`<eos>` for a newline):
`predict_next` lists the next tokens, and with `whole_words=True` the next whole words (`next_whole_words`);
`score` sums each whitespace word's tokens; `generate`'s text is the tokenizer's decoding of the ids.

The network runs as a step model (step_model.py) in the precision chosen by the one rule in precision.py
(`precision=` wins, else the precision saved in the run). Prompts go through a prefix-state cache
(prefix_cache.py): a prompt that extends an earlier one costs only its new words, with bit-identical results.
"""

import dataclasses
import string
import time
import warnings
from pathlib import Path

import numpy as np

from lstmlm.errors import LstmlmError
from lstmlm.metrics import perplexity
from lstmlm.precision import inference_precision
from lstmlm.inference.prefix_cache import PrefixCache, prompt_state
from lstmlm.run_directory import MODEL, epoch_model_file, load_run
from lstmlm.inference.samplers import make_sampler, sample_rows, softmax
from lstmlm.inference.step_model import make_step_model
from lstmlm.data.tokenizer import EOS, UNK, split_words
from lstmlm.data.tokenizers import WordTokenizer

DEFAULT_NUM_WORDS = 30  # words `generate` adds when not told: the CLI, the API, the server and the web page
DEFAULT_PREFIX_CACHE_BYTES = 64 * 2**20  # ~8,000 prompt states of a 2x500 model (8 KB each)


class LanguageModel:
    """A loaded run directory.

    Args:
        run_directory: a loaded run directory (`lstmlm.run_directory.load_run`).
        precision: None (the run's saved precision), "auto", "float32", "bfloat16" or "int8" (see precision.py).
        prefix_cache_bytes: memory bound of the prefix-state cache (0 = no cache).

    Example:
        >>> model = load("runs/ptb-small", precision="int8")        # doctest: +SKIP
        >>> model.predict_next("the stock market", top_k=3)       # doctest: +SKIP
        {'predictions': [{'word': 'is', 'probability': 0.09}, ...], 'unknown_words': []}
    """

    def __init__(self, run_directory, precision=None, prefix_cache_bytes=DEFAULT_PREFIX_CACHE_BYTES):
        self.run_directory = run_directory
        self.model = run_directory.model
        self.vocabulary = run_directory.vocabulary
        self.config = run_directory.config
        self.eos_id = self.vocabulary.index.get(EOS)
        self.tokenizer = getattr(run_directory, "tokenizer", None) or WordTokenizer(self.vocabulary,
                                                                                    self.config.lowercase)
        texts = [self.token_text(i) for i in range(len(self.vocabulary))]
        # tokens that begin a new whitespace word (or end a line): where `next_whole_words` and `score` cut words
        self._starts_word = np.array([text[:1].isspace() or i == self.eos_id for i, text in enumerate(texts)])
        self.precision = inference_precision(precision, run_directory.config.precision)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None
        # The weights are converted to the precision and layout of the step model once and kept (a user who
        # changes self.model's weights must call refresh()).
        self.step_model = make_step_model(self.model, self.precision)

    def refresh(self):
        """Rebuild the step model and empty the prefix cache (after changing the model's weights)."""
        self.step_model = make_step_model(self.model, self.precision)
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    # ---- words <-> ids --------------------------------------------------------------------------------
    def lookup(self, word):
        index = self.vocabulary.index
        for candidate in (word, word.lower(), word.strip(string.punctuation).lower()):
            if candidate in index:
                return index[candidate], candidate
        return None, word

    def token_text(self, token_id):
        """The text of one token as results show it: a word, a piece of text, or `<eos>` for a newline."""
        return self.tokenizer.token_text(int(token_id))

    def token_piece(self, word, previous=None):
        """The text a generated token adds to the text before it (see `word_piece`): a word model's word with its
        space, another model's token text as it is (`<eos>`: a newline)."""
        if self.tokenizer.kind == "word":
            return word_piece(word, previous)
        return "\n" if word == EOS else word

    def text_of(self, ids):
        """Generated ids as text: words joined by spaces, or the tokenizer's decoding."""
        if self.tokenizer.kind == "word":
            return join_words([self.vocabulary.words[int(i)] for i in ids])
        return self.tokenizer.decode([int(i) for i in ids])

    def encode_prompt(self, text):
        """(ids including the leading <eos>, the prompt's words (tokens) as looked up, unknown words)."""
        if self.tokenizer.kind != "word":
            ids = [self.eos_id] + self.tokenizer.encode(text).tolist()
            return ids, [self.token_text(i) for i in ids[1:]], self.tokenizer.unknown(text)
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
    def _prompt_states(self, ids):
        """The LSTM state (one row) after the prompt's ids, through the prefix cache."""
        return prompt_state(self.step_model, ids, self.prefix_cache)

    def _all_logits(self, ids):
        """Logits (positions, vocabulary) float64 after each of `ids`, from a zero state."""
        outputs, _ = self.step_model.advance([ids], self.step_model.initial_states(1))
        return np.asarray(self.step_model.logits(outputs[0]), dtype=np.float64)

    def _next_logits(self, states):
        """Logits (rows, vocabulary) float32 of the word after each row's state: the top layer's h is its output."""
        return self.step_model.logits(states[0][-1])

    def _top(self, probabilities, top_k):
        top_k = min(top_k, len(probabilities))
        top = np.argpartition(-probabilities, top_k - 1)[:top_k]  # the k largest, then sorted
        top = top[np.argsort(-probabilities[top], kind="stable")]
        return [{"word": self.token_text(i), "probability": float(probabilities[i])} for i in top]

    # ---- the public verbs -----------------------------------------------------------------------------
    def predict_next(self, text, top_k=5, whole_words=False):
        """The top_k most likely next words (tokens) with probabilities, most likely first.

        Args:
            whole_words: a char, byte or bpe model lists the next whole words instead of tokens
                (`next_whole_words`); a word model's tokens are words already.

        Returns {"predictions": [{"word", "probability"}], "unknown_words": [the prompt's words read as <unk>]}.
        """
        if whole_words and self.tokenizer.kind != "word":
            return self.next_whole_words(text, top_k)
        if top_k <= 0:
            raise LstmlmError(f"top_k must be positive, got {top_k}", argument="top_k")
        ids, _, unknown = self.encode_prompt(text)
        probabilities = softmax(self._next_logits(self._prompt_states(ids))[0])
        return {"predictions": self._top(probabilities, top_k), "unknown_words": unknown}

    def predict_next_batch(self, requests):
        """`predict_next` for several (text, top_k) requests at once: the same answers, bit for bit.

        Each prompt's state comes through the prefix cache on its own (one row, as predict_next computes it).
        Where the precision's products are batch invariant (int8: integer sums), the softmax layer -- the largest
        matrix -- then runs once for all rows. In float32 and bfloat16 BLAS rounds a product of many rows
        differently from a product of one (by the number of rows, not by the other rows' values), so there each
        row's product runs alone: an answer never depends on which requests shared the call.

        Returns a list of result dicts, or of LstmlmError for a request that was bad.
        """
        results, states, where = [None] * len(requests), [], []
        for i, (text, top_k) in enumerate(requests):
            try:
                if top_k <= 0:
                    raise LstmlmError(f"top_k must be positive, got {top_k}", argument="top_k")
                ids, _, unknown = self.encode_prompt(text)
                states.append(self._prompt_states(ids))
                where.append((i, top_k, unknown))
            except LstmlmError as error:
                results[i] = error
        if not states:
            return results
        step = self.step_model
        if step.batch_invariant:
            logits = self._next_logits(step.join(states))
        else:
            logits = np.concatenate([self._next_logits(state) for state in states])
        for row, (i, top_k, unknown) in enumerate(where):
            results[i] = {"predictions": self._top(softmax(logits[row]), top_k), "unknown_words": unknown}
        return results

    def generate(self, prompt="", num_words=DEFAULT_NUM_WORDS, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                 num_samples=None, *, deadline=None, words=None):
        """Continue the prompt word by word, carrying the LSTM state (each step feeds one word).

        Returns {"prompt_words", "words", "text", "unknown_words", "finish_reason"}: `words` are the num_words
        generated words, `text` the same with <eos> as newlines. `words=` is the deprecated name of `num_words`.

        `deadline` (a `time.monotonic()` value; the server passes its request's time bound) stops generation at
        the first word boundary after it: the words so far are returned with finish_reason "time_limit" instead
        of "num_words". They are the first words of what the call gives without a deadline (same seed).

        With `num_samples=N`, N continuations run as one batch (one matrix product per layer and word for all of
        them), sample i drawing from its own Generator seeded with seed + i: sample i is what
        `generate(..., seed=seed + i)` gives alone (exactly in int8; in float32/bfloat16 a word could differ only
        where two candidates' probabilities tie to within the batch's rounding, ~1e-6). Without a seed, a random
        base seed is drawn and reported. Returns {"prompt_words", "samples": [{"seed", "words", "text"}],
        "unknown_words"}.
        """
        if words is not None:
            warnings.warn("generate(words=...) is deprecated; use num_words=", DeprecationWarning, stacklevel=2)
            num_words = words
        sampler = _checked_sampler(num_words, num_samples, seed, temperature, top_k, top_p)
        ids, prompt_words, unknown = self.encode_prompt(prompt)
        if num_samples is None:
            out = self._generate_rows(ids, num_words, sampler, [np.random.default_rng(seed)], deadline)[0]
            return {"prompt_words": prompt_words, "words": [self.token_text(i) for i in out],
                    "text": self.text_of(out), "unknown_words": unknown,
                    "finish_reason": "num_words" if len(out) == num_words else "time_limit"}
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        seeds = [seed + i for i in range(num_samples)]
        rows = self._generate_rows(ids, num_words, sampler, [np.random.default_rng(s) for s in seeds], deadline)
        return {"prompt_words": prompt_words,
                "samples": [{"seed": s, "words": [self.token_text(i) for i in w], "text": self.text_of(w)}
                            for s, w in zip(seeds, rows)],
                "unknown_words": unknown,
                "finish_reason": "num_words" if len(rows[0]) == num_words else "time_limit"}

    def _generate_rows(self, ids, num_words, sampler, rngs, deadline=None):
        """One continuation of `ids` per Generator, all rows stepped together; lists of ids (shorter than
        num_words if `deadline` passed)."""
        out = [[] for _ in rngs]
        for generated in self._steps(ids, num_words, sampler, rngs, deadline):
            for row, token in zip(out, generated.ids):
                row.append(token)
        return out

    def _steps(self, ids, num_words, sampler, rngs, deadline=None, logprobs=None):
        """Yield a GeneratedStep per word: the one loop behind `generate` and `stream`. Lazy on purpose: the
        prompt runs on the first next(), each later next() runs one step, and a caller that stops asking (a
        client gone) stops the compute; the step after the last word is never run."""
        step = self.step_model
        states = self._prompt_states(ids)
        logits = np.repeat(self._next_logits(states), len(rngs), axis=0)  # (rows, vocabulary)
        states = step.repeat(states, len(rngs))
        for position in range(num_words):
            if deadline is not None and time.monotonic() >= deadline:
                return
            chosen = sample_rows(sampler, logits, rngs)
            yield GeneratedStep([int(i) for i in chosen], [self.token_text(i) for i in chosen],
                                None if logprobs is None else [self._log_probabilities(row, i, logprobs)
                                                               for row, i in zip(logits, chosen)])
            if position + 1 < num_words:
                _, states = step.advance(np.asarray(chosen)[:, None], states)
                logits = self._next_logits(states)

    def stream(self, prompt="", num_words=DEFAULT_NUM_WORDS, temperature=1.0, top_k=0, top_p=1.0, seed=None,
               num_samples=1, *, deadline=None, logprobs=None):
        """`generate`, one word at a time: a WordStream whose every next() computes one word per sample.

        The words are exactly `generate`'s for the same arguments (num_samples=1 is `generate(...)` without
        num_samples; N > 1 is `generate(..., num_samples=N)`, sample i seeded with seed + i). Nothing runs until
        the first next(); stop iterating (or call close()) and nothing more is computed.

        Args:
            logprobs: None, or k >= 0: each step also carries, per sample, the chosen word's log-probability and
                the k most likely words with theirs (natural log, the model's own distribution: temperature 1,
                no top-k/top-p cut, whatever the sampling settings).

        Example:
            >>> words = model.stream("the cat", num_words=3, temperature=0)      # doctest: +SKIP
            >>> [step.words[0] for step in words]                                # doctest: +SKIP
            ['sees', 'the', 'ball']
        """
        sampler = _checked_sampler(num_words, num_samples, seed, temperature, top_k, top_p)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise LstmlmError(f"logprobs must be None or an integer >= 0, got {logprobs!r}")
        ids, prompt_words, unknown = self.encode_prompt(prompt)
        if num_samples == 1:
            seeds = [seed]
        else:
            seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
            seeds = [seed + i for i in range(num_samples)]
        steps = self._steps(ids, num_words, sampler, [np.random.default_rng(s) for s in seeds], deadline, logprobs)
        return WordStream(steps, ids, prompt_words, unknown, seeds)

    def _log_probabilities(self, logits, chosen, top):
        """(log p of `chosen`, [(word, log p)] of the `top` most likely) under softmax(logits), in float64."""
        log_p = np.asarray(logits, dtype=np.float64)
        log_p = log_p - np.logaddexp.reduce(log_p)
        if top == 0:
            return float(log_p[chosen]), []
        best = np.argpartition(-log_p, min(top, len(log_p)) - 1)[:top]
        best = best[np.argsort(-log_p[best], kind="stable")]
        return float(log_p[chosen]), [(self.token_text(i), float(log_p[i])) for i in best]

    def prompt_log_probabilities(self, ids, top=0):
        """For each of `ids` after the first (a prompt from `encode_prompt`, with its leading <eos>): (log p
        given the ids before it, [(word, log p)] of the `top` most likely there). Computed as `score` does."""
        if len(ids) < 2:
            return []
        logits = self._all_logits(ids[:-1])
        return [self._log_probabilities(row, ids[t + 1], top) for t, row in enumerate(logits)]

    def score(self, text):
        """Log-probability (nats) of every word of `text` given the words before it (and a leading <eos>).

        A char, byte or bpe model scores tokens; each whitespace-separated word's log-probability is the sum over
        its tokens (a word's tokens run from the one that begins it up to the next token that begins with
        whitespace; a newline is the word `<eos>`; trailing whitespace joins the last word).

        Returns {"word_scores": [{"word", "log_probability"}], "total_log_probability", "tokens", "perplexity"
        (per token), "unknown_words"}; a char, byte or bpe model's also has "words" and "word_perplexity", and
        each word score its number of "tokens".
        """
        ids, words, unknown = self.encode_prompt(text)
        if len(ids) < 2:
            raise LstmlmError("score: the text has no words")
        log_probs = self._all_logits(ids[:-1])  # (positions, vocabulary)
        log_probs = log_probs - np.logaddexp.reduce(log_probs, axis=-1, keepdims=True)
        values = [float(log_probs[t, ids[t + 1]]) for t in range(len(ids) - 1)]
        total = float(sum(values))
        if self.tokenizer.kind == "word":
            return {"word_scores": [{"word": w, "log_probability": v} for w, v in zip(words, values)],
                    "total_log_probability": total, "tokens": len(values),
                    "perplexity": perplexity(-total / len(values)), "unknown_words": unknown}
        scores = self._word_scores(ids[1:], values)
        return {"word_scores": scores, "total_log_probability": total, "tokens": len(values),
                "perplexity": perplexity(-total / len(values)), "words": len(scores),
                "word_perplexity": perplexity(-total / len(scores)), "unknown_words": unknown}

    def _word_scores(self, ids, values):
        """[{"word", "log_probability", "tokens"}]: tokens grouped into whitespace words, log-probabilities summed."""
        groups = []  # [ids, log p]
        for token, value in zip(ids, values):
            current = groups[-1] if groups else None
            if token == self.eos_id:
                groups.append([[token], value])
                groups.append(None)  # the next token starts a word
            elif current is None or (self._starts_word[token] and self.tokenizer.decode(current[0]).strip()):
                groups.append([[token], value])
            else:
                current[0].append(token)
                current[1] += value
        groups = [group for group in groups if group is not None]
        if len(groups) > 1 and not self.tokenizer.decode(groups[-1][0]).strip() and groups[-1][0][0] != self.eos_id:
            groups[-2][0].extend(groups[-1][0])  # trailing whitespace
            groups[-2][1] += groups.pop()[1]
        return [{"word": EOS if group[0] == [self.eos_id] else self.tokenizer.decode(group[0]).strip(),
                 "log_probability": group[1], "tokens": len(group[0])} for group in groups]

    def next_whole_words(self, text, top_k=5, beam=None, max_tokens=12):
        """The top_k most likely next whole words after `text`, for a char, byte or bpe model.

        A word is completed to the next space: a beam search over tokens (width `beam`, default max(16, 4 top_k),
        at most `max_tokens` tokens per word) extends the prompt token by token; once a path's text holds a
        non-space character, the probability of every next token that begins with whitespace (or is `<eos>`) ends
        the word there: the path's probability times that mass is added to the word (the text stripped; several
        paths to one word add up). `<eos>` right after the prompt is the word `<eos>`. The probabilities are
        exact for the paths the beam keeps and a lower bound otherwise. A prompt that ends inside a word gets
        that word's completions; one that ends with spaces or tabs gets the next word, read as the model reads
        it: the spaces are dropped from the prompt and the word's first token must begin with whitespace (a BPE
        token carries the space before its word).

        Returns predict_next's dict: {"predictions": [{"word", "probability"}], "unknown_words"}.
        """
        if top_k <= 0:
            raise LstmlmError(f"top_k must be positive, got {top_k}", argument="top_k")
        beam = beam or max(16, 4 * top_k)
        new_word = text[-1:] in (" ", "\t")
        ids, _, unknown = self.encode_prompt(text.rstrip(" \t") if new_word else text)
        step = self.step_model
        states = self._prompt_states(ids)
        paths, found = [([], 0.0)], {}  # (token ids after the prompt, log p)
        for _ in range(max_tokens):
            logits = np.asarray(self._next_logits(states), dtype=np.float64)
            log_p = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
            candidates = []
            for row, (path, value) in enumerate(paths):
                word = self.tokenizer.decode(path).strip()
                ends = self._starts_word if word else (np.arange(len(self._starts_word)) == self.eos_id)
                mass = float(np.logaddexp.reduce(log_p[row][ends]))
                found[word or EOS] = found.get(word or EOS, 0.0) + float(np.exp(value + mass))
                allowed = np.where(~ends & (self._starts_word if new_word and not path else True))[0]
                best = allowed[np.argsort(-log_p[row][allowed], kind="stable")[:beam]]
                candidates.extend((value + log_p[row][token], row, int(token)) for token in best)
            candidates.sort(key=lambda candidate: -candidate[0])
            floor = sorted(found.values(), reverse=True)[top_k - 1] if len(found) >= top_k else 0.0
            candidates = [c for c in candidates[:beam] if np.exp(c[0]) > floor]  # cannot beat the k-th word
            if not candidates:
                break
            states = step.join([step.row(states, row) for _, row, _ in candidates])
            _, states = step.advance(np.array([[token] for _, _, token in candidates]), states)
            paths = [(paths[row][0] + [token], value) for value, row, token in candidates]
        top = sorted(found.items(), key=lambda item: -item[1])[:top_k]
        return {"predictions": [{"word": word, "probability": p} for word, p in top], "unknown_words": unknown}

    def evaluate(self, split="test", file=None, evaluation_batch_size=1, chunk_length=256):
        """`lstmlm.inference.evaluate.evaluate` on this run: {"split", "tokens", "loss", "perplexity", "accuracy",
        "top5_accuracy", "seconds", "num_unknown_words"}."""
        from lstmlm.inference.evaluate import evaluate

        return evaluate(self.run_directory, split=split, file=file, evaluation_batch_size=evaluation_batch_size,
                        chunk_length=chunk_length, step_model=self.step_model)

    def actual_vs_predicted(self, ids, skip=40, count=10):
        """The tutorial's report: for windows of num_steps words starting at skip, skip+1, ..., the word that
        follows each window and the model's greedy guess for it (each window from a zero state, as the tutorial).
        """
        steps = self.config.num_steps
        if len(ids) < skip + steps + count:
            raise LstmlmError(f"skip {skip} and count {count}: the text has only {len(ids)} tokens", argument="skip")
        actual, predicted = [], []
        for i in range(count):
            window = ids[skip + i : skip + i + steps]
            _, states = self.step_model.advance([window], self.step_model.initial_states(1))
            predicted.append(self.token_text(np.argmax(self._next_logits(states)[0])))
            actual.append(self.token_text(ids[skip + i + steps]))
        return {"actual": actual, "predicted": predicted}


def _checked_sampler(num_words, num_samples, seed, temperature, top_k, top_p):
    """The sampler for generate/stream, after checking their arguments (one message per mistake)."""
    if num_words < 0:
        raise LstmlmError(f"num_words must be >= 0, got {num_words}", argument="num_words")
    if num_samples is not None and num_samples < 1:
        raise LstmlmError(f"num_samples must be positive, got {num_samples}", argument="num_samples")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise LstmlmError(f"seed must be a non-negative integer, got {seed!r}", argument="seed")  # numpy's error said less
    try:
        return make_sampler(temperature, top_k, top_p)
    except ValueError as error:
        raise LstmlmError(f"sampling: {error}") from None


@dataclasses.dataclass(frozen=True)
class GeneratedStep:
    """One generated word per sample: `ids`, `words`, and (when asked) `logprobs`, per sample a pair
    (log p of its word, [(word, log p)] of the most likely words)."""

    ids: list
    words: list
    logprobs: list | None = None


class WordStream:
    """What `LanguageModel.stream` returns: an iterator of GeneratedStep, one per word, computed on demand.

    Attributes: prompt_ids (with the leading <eos>), prompt_words (as looked up), unknown_words, seeds (one per
    sample; [None] for one unseeded sample).
    """

    def __init__(self, steps, prompt_ids, prompt_words, unknown_words, seeds):
        self._steps = steps
        self.prompt_ids, self.prompt_words, self.unknown_words, self.seeds = \
            prompt_ids, prompt_words, unknown_words, seeds

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._steps)

    def close(self):
        """Stop: nothing more is computed."""
        self._steps.close()


def word_piece(word, previous=None):
    r"""The text `word` adds after the word `previous` (None: nothing before it), spelt as `join_words` spells
    it: the pieces of a word list concatenate to its `join_words` text, so a stream of pieces reads as the text.

    Example:
        >>> words = ["the", "cat", "<eos>", "a", "dog"]
        >>> "".join(word_piece(w, p) for w, p in zip(words, [None] + words)) == join_words(words)
        True
    """
    if word == EOS:
        return "\n"
    return word if previous is None or previous == EOS else " " + word


def join_words(words):
    r"""The words as text: separated by spaces, each <eos> written as a newline (without spaces around it).

    Example:
        >>> join_words(["the", "cat", "<eos>", "a", "dog", "<eos>"])
        'the cat\na dog\n'
    """
    return " ".join(words).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(f"{EOS} ", "\n") \
        .replace(EOS, "\n")


def load(run_dir, precision=None, prefix_cache_bytes=DEFAULT_PREFIX_CACHE_BYTES, epoch=None):
    """Load a run directory for prediction, generation, scoring and evaluation.

    Args:
        run_dir: the run directory.
        precision: None = the precision saved in the run; or "auto", "float32", "bfloat16", "int8"
            (the rule: lstmlm.precision).
        prefix_cache_bytes: memory for the prefix-state cache (0 = none).
        epoch: None = the best-validation model (model.keras); N = the checkpoint written after epoch N
            (the tutorial's test mode loads epoch 40's).
    """
    model_file = MODEL if epoch is None else epoch_model_file(epoch)
    if epoch is not None and not (Path(run_dir) / model_file).is_file():  # model-00, model--1: never written
        raise LstmlmError(f"epoch {epoch}: {Path(run_dir) / model_file} does not exist (a checkpoint is written "
                          "after each finished epoch)", argument="epoch")
    return LanguageModel(load_run(run_dir, model_file), precision, prefix_cache_bytes)
