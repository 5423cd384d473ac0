"""Built-in plugin ``eagle``: EAGLE-3 (Li et al., NeurIPS 2025) as a speculative head, with
EAGLE-2's dynamic draft tree (Li et al., EMNLP 2024) as its strategy. Registered through
``edgert_register_heads`` and ``edgert_register_strategies`` like any head plugin; it touches
no core file (it reads the target's hidden states through the heads' ``taps``).

* :mod:`.model`: the draft head in PyTorch, the released checkpoint layout (export, training);
* :mod:`.train`: EAGLE-3's training-time test (``edgert train eagle``);
* :mod:`.head`: the head family, its taps, graphs and manifest entry;
* :mod:`.session`: its graphs on a backend (numpy only);
* :mod:`.tree`: the dynamic tree; :mod:`.strategy`: ``--strategy eagle``.
"""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl

from .head import EagleHead
from .strategy import Eagle


@hookimpl
def edgert_register_heads():
    return [EagleHead()]


@hookimpl
def edgert_register_strategies():
    return [Eagle()]
