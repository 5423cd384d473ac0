"""The decoder replica: a :class:`~edgert.runtime.llm.generator.Generator` on one bundle.

One generation runs at a time on a replica (an asyncio lock): the decoder's KV cache and the
ONNX Runtime sessions belong to one sequence at a time, and on an edge CPU a second concurrent
sequence only splits the same cores. Concurrency comes from replicas; requests beyond a
replica's ``max_ongoing_requests`` wait in Ray Serve's router for a free one. The blocking
passes run in a worker thread so the replica's event loop keeps answering (health checks,
cancellations).
"""

from __future__ import annotations

import asyncio

from edgert.runtime.errors import EdgertError, InputError
from edgert.runtime.llm.generator import Generator

from .completions import CompletionRequest
from .errors import Failure, user_errors
from .options import ServeOptions

_END = object()


def served_options(strategy: str, options: dict, drafts: dict) -> dict:
    """A client's ``strategy_options`` with nothing in them that names a file on the server: an
    option that takes a bundle (the draft model) takes a name among the server's ``drafts``,
    one that may read a file (a Medusa tree) only its built-in values or inline JSON."""
    from edgert.runtime.host import get_host

    declared = getattr(get_host().get("strategy", strategy).obj, "options", None) or {}
    out = dict(options)
    for key, value in options.items():
        option = declared.get(key)
        if option is None or not option.names:
            continue
        if option.names == "bundle":
            if value not in drafts:
                offered = ", ".join(sorted(drafts)) or "none (edgert serve --draft NAME=BUNDLE)"
                raise InputError(f"strategy_options.{key}: {str(value)[:64]!r} is not a draft model this server "
                                 f"offers; a request names one of: {offered}")
            out[key] = drafts[value]
        elif value not in option.builtin and not str(value).lstrip().startswith(("[", "{")):
            raise InputError(f"strategy_options.{key}: a served request gives it as one of "
                             f"{', '.join(option.builtin)} or as inline JSON, never a file on the server")
    return out


class DecoderReplica:
    def __init__(self, name: str, path: str, options: ServeOptions):
        self.name, self.options = name, options
        self.generator = Generator(path, device=options.device, threads=options.threads, backend=options.backend,
                                   trusted_keys=options.keys)
        self.lock = asyncio.Lock()

    def _open(self, request: CompletionRequest):
        """The request's TextStream and the strategy it decodes with; everything about it is
        checked here, before any token (an unknown strategy, a bad option, a prompt longer than
        the context)."""
        gen = self.generator
        prompt = gen.encode_messages(request.messages) if request.chat else request.prompt
        if request.strategy is None:  # the server's own decoding: the operator's options, paths and all
            strategy, options = self.options.strategy, self.options.strategy_options
        else:
            strategy, options = request.strategy, served_options(request.strategy, request.strategy_options or {},
                                                                 self.options.drafts)
        stream = gen.stream(prompt, request.sampling(gen.context), strategy=strategy, strategy_options=options or {})
        return stream, strategy

    @user_errors
    async def complete(self, request: CompletionRequest) -> dict:
        """The whole generation: text, why it ended, and the token counts."""
        async with self.lock:
            def run():
                stream, strategy = self._open(request)
                text = "".join(stream)
                return stream.result, text, strategy

            result, text, strategy = await asyncio.to_thread(run)
        return {"text": text, "reason": result.stop_reason, "prompt_tokens": result.stats.prompt_tokens,
                "completion_tokens": len(result.tokens), "stats": _stats(result, strategy)}

    async def stream(self, request: CompletionRequest):
        """An async generator: ``{"accepted"}`` (or a Failure) once the request is checked (so that a bad
        one fails before the response starts), then ``{"text"}`` pieces, then ``{"reason",
        "completion_tokens"}``. A client that goes away cancels it; the strategy is closed."""
        async with self.lock:
            try:
                stream, strategy = await asyncio.to_thread(self._open, request)
            except EdgertError as err:
                yield Failure(err)
                return
            yield {"accepted": True}
            pending = None
            try:
                while True:
                    pending = asyncio.ensure_future(asyncio.to_thread(next, stream, _END))
                    piece = await asyncio.shield(pending)
                    pending = None
                    if piece is _END:
                        break
                    yield {"text": piece}
            finally:
                if pending is not None:  # cancelled while a pass runs in the worker thread: let it end first
                    await asyncio.wait({pending})
                stream.close()
        result = stream.result
        yield {"reason": result.stop_reason, "prompt_tokens": result.stats.prompt_tokens,
               "completion_tokens": len(result.tokens), "stats": _stats(result, strategy)}


def _stats(result, strategy: str) -> dict:
    """What the API's metrics take from a finished generation (never sent to the client)."""
    s = result.stats
    return {"ttft_s": s.ttft_s, "decode_s": s.decode_s, "new_tokens": s.new_tokens, "forward_calls": s.forward_calls,
            "tokens_per_pass": s.tokens_per_step, "strategy": strategy}
