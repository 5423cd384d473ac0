"""Built-in decoding strategy ``ar``: plain autoregressive decoding, one token per pass.

Registered through the strategy hook exactly as the speculative strategies are; it is the
baseline they must match token for token under greedy decoding.
"""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl


class Autoregressive:
    name = "ar"
    description = "plain autoregressive decoding: one decoder pass per token"

    def decode(self, d):
        logits = d.prefill()
        while True:
            token = d.sample(logits)
            yield [token]
            logits = d.step(token)


@hookimpl
def edgert_register_strategies():
    return [Autoregressive()]
