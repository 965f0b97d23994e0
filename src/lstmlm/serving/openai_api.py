"""The OpenAI completions contract over the loaded models: POST /v1/completions, GET /v1/models[/{id}].

lstmlm's model is a base language model, so the contract that fits is completions (text in, text out), not chat.
The official clients (`openai.OpenAI(base_url=".../v1").completions.create(...)`), LangChain and curl scripts
work unchanged. What is supported and what is refused (and why) is in docs/serve.md; in short:

- `prompt` (a string or a list of strings), `max_tokens` (default 16), `temperature`, `top_p`, `top_k` (an
  extension, as vLLM's), `n`, `stop` (up to 4 strings), `seed`, `stream` with `stream_options.include_usage`,
  `logprobs` (0-5), `echo`, `user` (ignored).
- Tokens are the model's tokens: words, or a char/byte/bpe model's pieces of text. A word's text is the word with
  the space before it (`word_piece`), a piece's text is itself, an `<eos>` is a newline, so the tokens of a choice
  concatenate to its text (`LanguageModel.token_piece`; a byte or bpe token that holds part of a character's
  UTF-8 bytes reads as U+FFFD alone).
- `seed` with n samples: sample i is seeded with seed + i (as `lstmlm generate --num-samples`); one seeded
  sample is `/v1/generate`'s text for that seed.
- The request's time bound (--max-request-seconds) ends a completion with finish_reason "length": the contract
  has no other value for "stopped early".
- `model` (required, as in the contract) names one of the served runs; each run has its own lock, so a long
  completion of one model never makes another's requests wait.

One sync generator (`choice_events`) produces the answer for both forms: the plain answer is its events joined,
the stream is its events as they come, one model step per event, so a seeded stream concatenates to exactly the
plain text. A stream holds the model's lock one word at a time (other requests interleave); a client that goes
away stops the generator between two words.
"""

import dataclasses
import json
import time
import uuid

from lstmlm.inference.language_model import word_piece
from lstmlm.serving.guards import Busy

REFUSED = {  # field -> why, for fields of the contract that do not apply to this model
    "suffix": "suffix (insertion) needs a model that reads the text after the gap; this one reads left to right",
    "logit_bias": "logit_bias is keyed by the OpenAI tokenizer's token ids, which this word model does not have",
    "presence_penalty": "presence_penalty is not implemented",
    "frequency_penalty": "frequency_penalty is not implemented",
}


class ApiError(Exception):
    """An error answered in the contract's shape: status, message, the field it concerns (param), a code."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def completion_request(limits):
    """The pydantic model of a /v1/completions body, bounded by `limits` (extra fields are a 400)."""
    from pydantic import BaseModel, ConfigDict, Field

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        include_usage: bool = False

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
        model: str = Field(description="one served run's name (GET /v1/models)")
        prompt: str | list[str] = Field("", description="text to continue, or a list of texts")
        max_tokens: int | None = Field(16, ge=0, le=limits.max_num_words, description="words to generate")
        temperature: float = Field(1.0, ge=0, le=limits.max_temperature, description="0 = greedy")
        top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold (1 = off)")
        top_k: int = Field(0, ge=0, le=limits.max_top_k, description="extension: the k most likely (0 = all)")
        n: int = Field(1, ge=1, le=limits.max_choices, description="continuations per prompt")
        stop: str | list[str] | None = Field(None, description="up to 4 strings that end a choice")
        seed: int | None = Field(None, ge=0, le=2**63 - 1 - limits.max_choices, description="same seed, same text")
        stream: bool = False
        stream_options: StreamOptions | None = None
        logprobs: int | None = Field(None, ge=0, le=5, description="top log-probabilities per token")
        echo: bool = False
        best_of: int | None = Field(None, ge=1, description="accepted only when equal to n")
        user: str | None = Field(None, description="accepted and ignored")
        suffix: str | None = None
        logit_bias: dict[str, float] | None = None
        presence_penalty: float = 0.0
        frequency_penalty: float = 0.0

    return CompletionRequest


def gate_of(gates, model_id):
    """The gate of the model named `model_id` among `gates` ({name: ModelGate}); another name is a 404."""
    if model_id not in gates:
        served = ", ".join(map(repr, gates))
        raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {served}", "model",
                       "model_not_found")
    return gates[model_id]


def check_request(request, limits):
    """The checks pydantic cannot express: refused fields, stop strings, prompt sizes (the model's name is
    `gate_of`'s)."""
    for field, why in REFUSED.items():
        if getattr(request, field):
            raise ApiError(400, f"{field} is not supported: {why}", field, "unsupported_parameter")
    if request.best_of is not None and request.best_of != request.n:
        raise ApiError(400, "best_of must equal n (or be left out): every sample is returned, none is ranked",
                       "best_of", "unsupported_parameter")
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "stream_options needs stream: true", "stream_options")
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > 4 or any(stop == "" for stop in stops):
        raise ApiError(400, "stop must be up to 4 non-empty strings", "stop")
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts or len(prompts) * request.n > limits.max_choices:
        raise ApiError(400, f"prompt must be a string or 1..{limits.max_choices // request.n} strings "
                            f"(prompts x n at most {limits.max_choices})", "prompt")
    for prompt in prompts:
        words = len(prompt.split())
        if len(prompt) > limits.max_text_characters or words > limits.max_text_words:
            raise ApiError(400, f"a prompt has {len(prompt)} characters and {words} words; the limits are "
                                f"{limits.max_text_characters} and {limits.max_text_words}", "prompt")
    return prompts, stops


class Choice:
    """One choice's text as its words arrive. The stop strings cut it; a piece of text is released only when no
    stop string can still begin in it, so the pieces sent concatenate to the final text.

    Example:
        >>> choice = Choice(0, stops=["cat"], previous=None)
        >>> [choice.add(word) for word in ["the", "ca", "cat"]], choice.finish_reason
        (['the', ' ', 'ca '], 'stop')
        >>> choice.text
        'the ca '
    """

    def __init__(self, index, stops, previous, offset=0, piece=word_piece):
        self.index, self.stops, self.previous, self.offset, self.piece = index, stops, previous, offset, piece
        self.text, self.released, self.tokens, self.finish_reason = "", 0, 0, None

    def add(self, word, logprob=None):
        """Append a generated word; return the text to send now (possibly "")."""
        before, start = self.previous, len(self.text)
        piece = self.piece(word, before)
        self.previous, self.text, self.tokens = word, self.text + piece, self.tokens + 1
        self.token_logprobs = None if logprob is None else self._logprobs(piece, start, logprob, before)
        cuts = [at for at in (self.text.find(stop, self.released) for stop in self.stops) if at >= 0]
        if cuts:
            self.text, self.finish_reason = self.text[:min(cuts)], "stop"
            return self._release(len(self.text))
        held = max([k for stop in self.stops for k in range(1, len(stop)) if self.text.endswith(stop[:k])], default=0)
        return self._release(max(self.released, len(self.text) - held))

    def finish(self, reason="length"):
        """End the choice (if a stop string has not): the text still held back."""
        self.finish_reason = self.finish_reason or reason
        return self._release(len(self.text))

    def _release(self, end):
        out, self.released = self.text[self.released:end], end
        return out

    def _logprobs(self, piece, start, logprob, before):
        """This token's logprobs in the contract's form; the alternatives are spelt as they would follow `before`."""
        chosen, top = logprob
        return {"tokens": [piece], "token_logprobs": [chosen], "text_offset": [self.offset + start],
                "top_logprobs": [{self.piece(word, before): value for word, value in top}]}


def echo_event(index, prompt, prompt_words, prompt_logprobs, piece=word_piece):
    """The echoed prompt as a choice event: its text as given, its tokens with their log-probabilities (`piece`:
    a token's text after the one before it)."""
    if prompt_logprobs is None:
        return {"index": index, "text": prompt, "logprobs": None, "finish_reason": None}
    logprobs = {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": []}
    previous, position, lowered = None, 0, prompt.lower()
    for word, (chosen, top) in zip(prompt_words, prompt_logprobs):
        found = lowered.find(word.lower(), position)  # where the word is written, if it is (not for <unk>)
        position = found if found >= 0 else position
        logprobs["tokens"].append(piece(word, previous))
        logprobs["token_logprobs"].append(chosen)
        logprobs["text_offset"].append(position)
        logprobs["top_logprobs"].append({piece(w, previous): value for w, value in top})
        previous = word
    return {"index": index, "text": prompt, "logprobs": logprobs, "finish_reason": None}


@dataclasses.dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self):
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def choice_events(language_model, request, prompts, stops, deadline, hold):
    """Yield ("choice", {index, text, logprobs, finish_reason}) per generated word and choice, then ("usage",
    {...}): the answer to one request, computed one model step per next().

    Args:
        hold: a function returning the context each model step runs in: the gate's lock (a stream, which holds
            it one word at a time) or a no-op (a plain answer, whose caller holds the lock throughout).
    Busy at the first prompt's first step goes to the caller (a 503 before anything was sent); later it ends the
    unfinished choices with "length", as the time bound does.
    """
    usage = Usage()
    for number, prompt in enumerate(prompts):
        yield from _prompt_events(language_model, request, prompt, number * request.n, stops, deadline, hold,
                                  usage)
    yield "usage", usage.as_dict()


def _prompt_events(language_model, request, prompt, first_index, stops, deadline, hold, usage):
    words = language_model.stream(prompt, request.max_tokens, request.temperature, request.top_k, request.top_p,
                                  None if request.seed is None else request.seed + first_index, request.n,
                                  deadline=deadline, logprobs=request.logprobs)
    usage.prompt_tokens += len(words.prompt_words)
    previous = None if prompt == "" or prompt[-1].isspace() else "prompt"  # a space before the first word?
    choices = [Choice(first_index + i, stops, previous, len(prompt) if request.echo else 0,
                      language_model.token_piece) for i in range(request.n)]
    try:
        step, prompt_logprobs = _first_step(language_model, request, words, hold, first=first_index == 0)
        if request.echo:
            for choice in choices:
                yield "choice", echo_event(choice.index, prompt, words.prompt_words, prompt_logprobs,
                                           language_model.token_piece)
        while step is not None:
            for choice, word, logprob in zip(choices, step.words, step.logprobs or [None] * request.n):
                if choice.finish_reason is None:
                    text = choice.add(word, logprob)
                    yield "choice", {"index": choice.index, "text": text, "logprobs": choice.token_logprobs,
                                     "finish_reason": choice.finish_reason}
            if all(choice.finish_reason for choice in choices):
                break  # every choice met a stop string: no more words are computed
            step = _next_step(words, hold)
    finally:
        words.close()
    for choice in choices:
        if choice.finish_reason is None:
            yield "choice", {"index": choice.index, "text": choice.finish(), "logprobs": None,
                             "finish_reason": "length"}
        usage.completion_tokens += choice.tokens


def _first_step(language_model, request, words, hold, first):
    """The prompt and its first word (and, with echo and logprobs, the prompt's log-probabilities), in one hold."""
    try:
        with hold():
            step = next(words, None)
            prompt_logprobs = None
            if request.echo and request.logprobs is not None:
                prompt_logprobs = language_model.prompt_log_probabilities(words.prompt_ids, request.logprobs)
            return step, prompt_logprobs
    except Busy:
        if first:
            raise
        return None, None


def _next_step(words, hold):
    """The next word of every choice; None at the end, the time bound, or a model busy until the time bound."""
    try:
        with hold():
            return next(words, None)
    except Busy:
        return None


def completion_body(head, events, logprobs):
    """The plain (not streamed) answer: the events of each choice joined."""
    choices, usage = {}, None
    for kind, event in events:
        if kind == "usage":
            usage = event
            continue
        empty = None if logprobs is None else {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                "text_offset": []}
        choice = choices.setdefault(event["index"], {"index": event["index"], "text": "", "logprobs": empty,
                                                     "finish_reason": None})
        choice["text"] += event["text"]
        for key, values in (event["logprobs"] or {}).items():
            choice["logprobs"][key].extend(values)
        choice["finish_reason"] = event["finish_reason"] or choice["finish_reason"]
    return {**head, "choices": [choices[index] for index in sorted(choices)], "usage": usage}


async def sse_frames(head, first, events, include_usage):
    """The stream: one `data: {chunk}` event per choice event as it is computed, the usage chunk when asked,
    then `data: [DONE]`. Each next() of `events` runs in a worker thread (it computes a word); when the client
    goes away Starlette cancels this generator, and `events` is never advanced again."""
    from fastapi.sse import format_sse_event
    from starlette.concurrency import iterate_in_threadpool

    def frame(kind, event):
        if kind == "usage":
            return format_sse_event(data_str=json.dumps({**head, "choices": [], "usage": event}))
        chunk = {**head, "choices": [event]}
        if include_usage:
            chunk["usage"] = None  # the contract: null on every chunk but the last
        return format_sse_event(data_str=json.dumps(chunk))

    yield frame(*first)
    async for kind, event in iterate_in_threadpool(events):
        if kind == "choice" or include_usage:
            yield frame(kind, event)
    yield format_sse_event(data_str="[DONE]")


def model_card(language_model, name):
    """GET /v1/models' entry for the served run: created is when its config.json was written (training began)."""
    try:
        created = int((language_model.run_directory.path / "config.json").stat().st_mtime)
    except (OSError, AttributeError):
        created = int(time.time())
    return {"id": name, "object": "model", "created": created, "owned_by": "lstmlm"}


def add_openai_routes(app, gates, limits):
    """Register POST /v1/completions, GET /v1/models and GET /v1/models/{model_id} on `app`, serving the models
    of `gates` ({name: ModelGate}, in the order /v1/models lists them)."""
    import contextlib

    from fastapi import Request
    from fastapi.sse import EventSourceResponse

    from lstmlm.serving.guards import deadline_of

    CompletionRequest = completion_request(limits)
    cards = {name: model_card(gate.language_model, name) for name, gate in gates.items()}

    @app.get("/v1/models")
    def list_models():
        """The served models, in the contract's list shape (the first is the one the native routes serve)."""
        return {"object": "list", "data": list(cards.values())}

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str):
        """A served model; another name is a 404."""
        gate_of(gates, model_id)
        return cards[model_id]

    @app.post("/v1/completions")
    def completions(request: CompletionRequest, http: Request):
        """Continue `prompt`: the OpenAI completions contract (docs/serve.md lists what is supported)."""
        gate = gate_of(gates, request.model)  # first, as before: a wrong name says so whatever else is wrong
        prompts, stops = check_request(request, limits)
        deadline = deadline_of(http)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": request.model}
        if not request.stream:
            with gate.hold(deadline) as language_model:
                events = list(choice_events(language_model, request, prompts, stops, deadline, contextlib.nullcontext))
            return completion_body(head, events, request.logprobs)
        events = choice_events(gate.language_model, request, prompts, stops, deadline, lambda: gate.hold(deadline))
        first = next(events)  # the prompt and its first word: Busy here is still a plain 503
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        return EventSourceResponse(sse_frames(head, first, events, include_usage),
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
