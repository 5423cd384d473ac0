"""OpenAI's completions and chat-completions requests and responses.

A request body is checked here, field by field, into a :class:`CompletionRequest` (what a
decoder replica needs: the prompt or the messages, the sampling values, the strategy); the
replica's :class:`~edgert.runtime.llm.generator.GenerationResult` goes back into OpenAI's
response, or into its stream of chunks. Fields OpenAI has and edgert cannot honour are refused
when they ask for something (``n`` > 1, ``logprobs``, penalties), never silently ignored.
edgert's own fields: ``strategy`` and ``strategy_options`` (speculative decoding per request),
``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from edgert.runtime.errors import InputError
from edgert.runtime.llm.sampling import SamplingParams

COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat runs to the context
MAX_STOP = 4


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    chat: bool
    prompt: str | list[int] | None = None
    messages: list[dict] | None = None
    max_tokens: int | None = None
    params: dict = field(default_factory=dict)     # SamplingParams' fields but max_new_tokens
    stream: bool = False
    include_usage: bool = False
    strategy: str | None = None
    strategy_options: dict | None = None

    def sampling(self, context: int) -> SamplingParams:
        budget = self.max_tokens if self.max_tokens is not None else (context if self.chat else COMPLETIONS_MAX_TOKENS)
        return SamplingParams(max_new_tokens=budget, **self.params)


def _typed(body: dict, key: str, types, what: str, default=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise InputError(f"{key}: expected {what}, given {value!r}")
    if not isinstance(value, types):
        raise InputError(f"{key}: expected {what}, given {type(value).__name__}")
    return value


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text ones are
    understood here."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(f"{where}: only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise InputError(f"{where}: expected a string or a list of text parts")


def parse_request(body: dict, chat: bool) -> CompletionRequest:
    """The body of ``/v1/completions`` (``chat`` False) or ``/v1/chat/completions``, checked."""
    model = _typed(body, "model", str, "a model name")
    if not model:
        raise InputError("model: required (GET /v1/models lists the served ones)")
    prompt = messages = None
    if chat:
        given = body.get("messages")
        if not isinstance(given, list) or not given:
            raise InputError("messages: expected a non-empty list of {role, content}")
        messages = []
        for i, message in enumerate(given):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InputError(f"messages[{i}]: expected an object with a role")
            messages.append({"role": message["role"], "content": _text(message.get("content"), f"messages[{i}].content")})
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = list(prompt)
        elif not isinstance(prompt, str):
            raise InputError("prompt: expected a string or a list of token ids (one prompt per request)")
    n = _typed(body, "n", int, "an integer", 1)
    stream = _typed(body, "stream", bool, "true or false", False)
    if n != 1:
        raise InputError(f"n: only 1 is supported, given {n}" + (" (with stream: true)" if stream else ""))
    max_tokens = _typed(body, "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens",
                        int, "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens: must be a positive integer, given {max_tokens}")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP
                             or not all(isinstance(s, str) and s for s in stop)):
        raise InputError(f"stop: expected a non-empty string or a list of at most {MAX_STOP}")
    for key in ("presence_penalty", "frequency_penalty"):
        if _typed(body, key, (int, float), "a number", 0) != 0:
            raise InputError(f"{key}: not supported (edgert has repetition_penalty)")
    for key in ("logprobs", "top_logprobs", "logit_bias", "tools", "functions", "suffix", "response_format"):
        if body.get(key) not in (None, False, {}, []):
            raise InputError(f"{key}: not supported by this server")
    if _typed(body, "echo", bool, "true or false", False):
        raise InputError("echo: not supported by this server")
    if _typed(body, "best_of", int, "an integer", 1) != 1:
        raise InputError("best_of: only 1 is supported")
    temperature = _typed(body, "temperature", (int, float), "a number", 1.0)  # OpenAI's default
    if not 0 <= temperature <= 2:
        raise InputError(f"temperature: must be in [0, 2], given {temperature}")
    params = {"temperature": float(temperature),
              "top_p": float(_typed(body, "top_p", (int, float), "a number", 1.0)),
              "top_k": _typed(body, "top_k", int, "an integer", 0),
              "repetition_penalty": float(_typed(body, "repetition_penalty", (int, float), "a number", 1.0)),
              "seed": _typed(body, "seed", int, "an integer"),
              "stop": tuple(stop or ())}
    SamplingParams(**params)  # the runtime's own checks, before the request travels to a replica
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    strategy = _typed(body, "strategy", str, "a strategy name")
    strategy_options = _typed(body, "strategy_options", dict, "an object of option: value")
    if strategy_options is not None:
        strategy_options = {str(k): v if isinstance(v, str) else str(v) for k, v in strategy_options.items()}
    return CompletionRequest(model, chat, prompt, messages, max_tokens, params, stream, include_usage, strategy,
                             strategy_options)


FINISH = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length", "context": "length"}


class Reply:
    """One request's response in OpenAI's shapes: the whole of it, or its stream chunks."""

    def __init__(self, request: CompletionRequest):
        self.request = request
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if request.chat else "text_completion"

    def _envelope(self, obj: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model,
                "choices": choices, **extra}

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def whole(self, text: str, reason: str, prompt_tokens: int, completion_tokens: int) -> dict:
        finish = FINISH.get(reason, "stop")
        if self.request.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self._envelope(self.object, [choice], usage=self.usage(prompt_tokens, completion_tokens))

    def chunk(self, text: str | None = None, reason: str | None = None, first: bool = False) -> dict:
        finish = FINISH.get(reason, "stop") if reason else None
        if self.request.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return self._envelope("chat.completion.chunk", [choice])
        return self._envelope("text_completion", [{"index": 0, "text": text or "", "logprobs": None,
                                                   "finish_reason": finish}])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        obj = "chat.completion.chunk" if self.request.chat else "text_completion"
        return self._envelope(obj, [], usage=self.usage(prompt_tokens, completion_tokens))
