"""A third-party speculative head and its strategy: the draft is the last token, repeated.

It shows (and its test proves) the head author's path through ``edgert_register_heads``:

* export: ``edgert export llama --opt repeat=repeat.json`` (``{"length": N}``) adds the graph
  ``repeat`` (``last_token`` int64 [batch, 1] -> ``draft`` int64 [batch, N]), planned as a
  :class:`~edgert.exporters.llm.plan.GraphJob` that edgert exports and parity-checks like its
  own, and the manifest entry ``decoder.heads.repeat``;
* run: ``d.head("repeat")`` opens that graph on the target's backend; ``--strategy repeat``
  verifies its draft as a chain, so greedy output equals ``ar``'s.

Useful on text that repeats a token (runs of spaces, digits, padding), and nowhere else: it is
an example, not a method.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgert import hookimpl
from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.errors import EdgertError


class RepeatHead:
    name = "repeat"
    what = "a repeat head"
    description = "proposes the last token repeated N times (example third-party head)"
    paper = "none: an example"
    file_help = "JSON file {\"length\": N}: how many repeats the head proposes"
    flavours = ("onnx",)

    def plan(self, ctx, source):
        import torch

        from edgert.exporters.llm.plan import GraphJob

        try:
            length = int(json.loads(Path(source).read_text(encoding="utf-8"))["length"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise EdgertError(f"{source}: not a repeat-head file ({{\"length\": N}}): {type(err).__name__}") from None
        if not 1 <= length <= 64:
            raise EdgertError(f"{source}: length {length}: expected 1 to 64")

        class Repeat(torch.nn.Module):
            def forward(self, last_token):
                return last_token.repeat(1, length)

        spec = GraphSpec("repeat", "repeat.onnx", (TensorSpec("last_token", "int64", ("batch", 1)),),
                         (TensorSpec("draft", "int64", ("batch", length)),))
        case = {"last_token": ctx.rng.integers(0, ctx.geometry.vocab_size, (2, 1)).astype(np.int64)}
        return [GraphJob(spec, Repeat(), dict(case), ctx.parity(Repeat(), {"tokens": case}))], {"graph": "repeat",
                                                                                              "length": length}

    def open(self, target, entry):
        backend = target.open_backend(entry["graph"])

        def propose(token: int) -> list[int]:
            return backend.run({"last_token": np.array([[token]], np.int64)})["draft"][0].tolist()
        return propose


class RepeatStrategy:
    name = "repeat"
    description = "the repeat head's draft verified as a chain (example third-party strategy; greedy: lossless)"

    def decode(self, d):
        propose = d.head("repeat")
        root = d.sample(d.prefill())
        while True:  # the head's draft, cut to the room left (none left: a plain step)
            root = yield from d.verify_chain(root, propose(root)[: max(0, d.room - 1)])


@hookimpl
def edgert_register_heads():
    return [RepeatHead()]


@hookimpl
def edgert_register_strategies():
    return [RepeatStrategy()]
