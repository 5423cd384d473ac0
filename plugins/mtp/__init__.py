"""Built-in plugin ``mtp``: a DeepSeek-V3-style multi-token-prediction module as a speculative
head, and the strategy that decodes with it. Registered through ``edgert_register_heads`` and
``edgert_register_strategies`` exactly as a third-party head plugin is.

* :mod:`.head`: the head family, export (the ``mtp`` graph), training and run sides;
* :mod:`.strategy`: ``--strategy mtp``, chained drafts verified in one pass.
"""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl

from .head import MTPHead
from .strategy import MultiTokenPrediction


@hookimpl
def edgert_register_heads():
    return [MTPHead()]


@hookimpl
def edgert_register_strategies():
    return [MultiTokenPrediction()]
