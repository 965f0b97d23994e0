"""lstmlm's own routes: POST /v1/next, /v1/generate and /v1/score.

Every answer is the library's result dict as it is (`LanguageModel.predict_next`, `generate`, `score`), so the
keys are those of `lstmlm predict/generate --json`. A bad field is a 422 `{"error", "details"}` (server.py's
handlers); these shapes are documented and stay as they are.
"""

import time

from lstmlm.errors import LstmlmError
from lstmlm.serving.guards import Busy, deadline_of


def request_models(limits):
    """Pydantic models of the three request bodies, bounded by `limits` (built per app: limits may differ)."""
    from pydantic import BaseModel, ConfigDict, Field

    from lstmlm.inference.language_model import DEFAULT_NUM_WORDS

    # extra="forbid": a misspelt field ("topk") is an error, not silently the default.
    strict = ConfigDict(extra="forbid", allow_inf_nan=False)
    text_field = dict(max_length=limits.max_text_characters)

    class NextRequest(BaseModel):
        model_config = strict
        text: str = Field(description="the words so far", **text_field)
        top_k: int = Field(5, ge=1, le=limits.max_top_k, description="how many words to list")
        whole_words: bool = Field(False, description="a char, byte or bpe model: the next whole words, not tokens")

    class GenerateRequest(BaseModel):
        model_config = strict
        prompt: str = Field("", description="words to continue (empty: a new sentence)", **text_field)
        num_words: int = Field(DEFAULT_NUM_WORDS, ge=0, le=limits.max_num_words,
                               description="how many words to generate")
        temperature: float = Field(1.0, ge=0, le=limits.max_temperature, description="0 = greedy")
        top_k: int = Field(0, ge=0, le=limits.max_top_k, description="sample among the k most likely (0 = all)")
        top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold (1 = off)")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="same seed, same text")

    class ScoreRequest(BaseModel):
        model_config = strict
        text: str = Field(description="the text to score", min_length=1, **text_field)

    return NextRequest, GenerateRequest, ScoreRequest


def answer_or_error(function, *args):
    """function(*args), or the LstmlmError it raised (the micro-batcher raises it in that request's thread)."""
    try:
        return function(*args)
    except LstmlmError as error:
        return error


def check_word_count(text, limits):
    count = len(text.split())
    if count > limits.max_text_words:
        raise LstmlmError(f"the text has {count} words; the limit is {limits.max_text_words}")


def next_batch_function(language_model):
    """The micro-batcher's batch function: [(text, top_k)] -> results, run holding the model's lock."""
    def next_batch(requests):
        if language_model.step_model.batch_invariant:  # int8: one softmax-layer product for the batch
            return language_model.predict_next_batch(requests)
        return [answer_or_error(language_model.predict_next, *request) for request in requests]  # each row alone

    return next_batch


def add_native_routes(app, gate, batcher, limits):
    """Register /v1/next, /v1/generate and /v1/score on `app`; `gate` is the model behind its lock, `batcher`
    the /v1/next micro-batcher (None: each request alone under the lock)."""
    from fastapi import Request

    NextRequest, GenerateRequest, ScoreRequest = request_models(limits)

    @app.post("/v1/next")
    def next_words(request: NextRequest, http: Request):
        """The `top_k` most likely next words after `text`, most likely first: {"predictions": [{"word",
        "probability"}], "unknown_words"}."""
        check_word_count(request.text, limits)
        if request.whole_words:  # a beam search of its own (a word model's words are its tokens: the same answer)
            with gate.hold(deadline_of(http)) as language_model:
                return language_model.predict_next(request.text, request.top_k, whole_words=True)
        if batcher is not None:
            try:
                return batcher.submit((request.text, request.top_k), max(0.0, deadline_of(http) - time.monotonic()))
            except TimeoutError:
                raise Busy() from None
        with gate.hold(deadline_of(http)) as language_model:
            return language_model.predict_next(request.text, request.top_k)

    @app.post("/v1/generate")
    def generate(request: GenerateRequest, http: Request):
        """Continue `prompt` by `num_words` words: {"prompt_words", "words", "text", "unknown_words",
        "finish_reason"}; the same seed (and settings) gives the same text. Generation stops at the request's
        time bound (`limits.max_request_seconds`) with the words so far and finish_reason "time_limit"."""
        check_word_count(request.prompt, limits)
        with gate.hold(deadline_of(http)) as language_model:
            return language_model.generate(request.prompt, request.num_words, request.temperature, request.top_k,
                                           request.top_p, request.seed, deadline=deadline_of(http))

    @app.post("/v1/score")
    def score(request: ScoreRequest, http: Request):
        """Log-probability (nats) of each word given the words before it: {"word_scores": [{"word",
        "log_probability"}], "total_log_probability", "tokens", "perplexity", "unknown_words"}."""
        check_word_count(request.text, limits)
        with gate.hold(deadline_of(http)) as language_model:
            return language_model.score(request.text)
