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

from edgert.runtime.errors import EdgertError
from edgert.runtime.llm.generator import Generator

from .completions import CompletionRequest
from .errors import Failure, user_errors
from .options import ServeOptions

_END = object()


class DecoderReplica:
    def __init__(self, name: str, path: str, options: ServeOptions):
        self.name, self.options = name, options
        self.generator = Generator(path, device=options.device, threads=options.threads, backend=options.backend,
                                   trusted_keys=options.keys)
        self.lock = asyncio.Lock()

    def _open(self, request: CompletionRequest):
        """The request's TextStream; everything about it is checked here, before any token (an
        unknown strategy, a bad option, a prompt longer than the context)."""
        gen = self.generator
        prompt = gen.encode_messages(request.messages) if request.chat else request.prompt
        options = request.strategy_options if request.strategy is not None else self.options.strategy_options
        return gen.stream(prompt, request.sampling(gen.context), strategy=request.strategy or self.options.strategy,
                          strategy_options=options or {})

    @user_errors
    async def complete(self, request: CompletionRequest) -> dict:
        """The whole generation: text, why it ended, and the token counts."""
        async with self.lock:
            def run():
                stream = self._open(request)
                text = "".join(stream)
                return stream.result, text

            result, text = await asyncio.to_thread(run)
        return {"text": text, "reason": result.stop_reason, "prompt_tokens": result.stats.prompt_tokens,
                "completion_tokens": len(result.tokens)}

    async def stream(self, request: CompletionRequest):
        """An async generator: ``{"accepted"}`` (or a Failure) once the request is checked (so that a bad
        one fails before the response starts), then ``{"text"}`` pieces, then ``{"reason",
        "completion_tokens"}``. A client that goes away cancels it; the strategy is closed."""
        async with self.lock:
            try:
                stream = await asyncio.to_thread(self._open, request)
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
               "completion_tokens": len(result.tokens)}
