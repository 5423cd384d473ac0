"""Medusa trees in Medusa's ``medusa_choices`` format: each path lists a top-k rank per depth.

``mc_sim_7b_63`` is the published default tree of FasterDecoding/Medusa
(medusa/model/medusa_choices.py, Apache-2.0): 63 nodes, depth 4, tuned for Vicuna-7B's heads.
The small trees are for CPUs, where every verified node costs compute: a verify pass over 64
nodes costs several single-token steps on a CPU (``edgert tune-tree`` picks by measurement).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..inputs import read_text

TREES: dict[str, list[list[int]]] = {
    "mc_sim_7b_63": [
        [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5], [0, 0, 1],
        [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0], [0, 9], [8], [9], [1, 0, 0],
        [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 1, 1], [0, 0, 6],
        [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2],
        [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 1],
        [1, 6], [0, 7, 0],
    ],
    # A chain of the heads' top-1 guesses: the cheapest tree, one node per head.
    "chain_4": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]],
    # The first 7 and 15 nodes of mc_sim_7b_63 that form a tree on their own (its order is by
    # measured usefulness), for CPUs.
    "mc_sim_7": [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0]],
    "mc_sim_15": [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5],
                  [0, 0, 1]],
}


def load_choices(spec: str) -> list[list[int]]:
    """A tree by name (see TREES), from a JSON file, or as an inline JSON list."""
    if spec in TREES:
        return TREES[spec]
    text = spec
    if not spec.lstrip().startswith("["):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"medusa tree {spec!r}: not a known tree ({', '.join(TREES)}), a JSON file or a JSON list")
        text = read_text(path, "medusa tree")
    try:
        choices = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"medusa tree {spec[:40]!r}: not valid JSON ({err})") from None
    if not isinstance(choices, list):
        raise InputError("medusa tree: expected a list of rank paths, e.g. [[0], [0, 0], [1]]")
    return choices
