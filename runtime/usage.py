"""How a bundle is used, read off its manifest alone: the one answer the CLI, the video chain,
int8 calibration and the server ask for.

* ``decoder``: an LLM decoder (``edgert generate``, the OpenAI routes);
* ``stream``: a detector whose main graph carries state (online TSM, the online action
  detectors), stepped one item at a time; ``step`` says what an item is: a decoded ``frame``, or
  a ``feature`` vector of one chunk (``unit`` words it for people: "frame" or "chunk");
* ``extractor``: a recognizer exported with ``--opt output=features``, whose output feeds a
  feature stream (``dim``: the features' size);
* ``recognizer``: any other detector, one prediction per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bundle import Bundle


@dataclass(frozen=True)
class Usage:
    kind: str          # decoder | stream | extractor | recognizer
    step: str = ""     # stream: "frame" or "feature"
    dim: int = 0       # extractor: the features it gives; feature stream: the features it takes

    @property
    def unit(self) -> str:
        """What one step is called in messages."""
        return "chunk" if self.step == "feature" else "frame"


def usage_of(bundle: Bundle) -> Usage:
    if bundle.kind == "decoder":
        return Usage("decoder")
    main = bundle.graph()
    if main.state:
        if "feature_dim" in bundle.preprocessing:
            return Usage("stream", "feature", int(bundle.preprocessing["feature_dim"]))
        return Usage("stream", "frame")
    outputs = main.outputs
    if outputs and outputs[0].name == "features":
        return Usage("extractor", dim=int(outputs[0].dims[-1]))
    return Usage("recognizer")
