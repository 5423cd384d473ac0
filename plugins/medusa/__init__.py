"""Built-in plugin ``medusa``: Medusa heads (Cai et al., 2024) as a speculative head, and the
strategy that decodes with them. Registered through ``edgert_register_heads`` and
``edgert_register_strategies`` exactly as a third-party head plugin is.

* :mod:`.head`: the head family, export (the ``medusa`` graph), training and run sides;
* :mod:`.session`: the ``medusa`` graph on a backend (numpy only);
* :mod:`.strategy`: ``--strategy medusa``, tree proposals verified in one pass.
"""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl

from .head import MedusaHead
from .strategy import Medusa


@hookimpl
def edgert_register_heads():
    return [MedusaHead()]


@hookimpl
def edgert_register_strategies():
    return [Medusa()]
