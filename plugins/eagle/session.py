"""The bundle's EAGLE-3 graphs on the target's backend (numpy only): ``eagle_fc`` fuses the
target's tapped hidden states, ``eagle`` is the draft layer on the decoder contract."""

from __future__ import annotations

import numpy as np

from edgert.runtime.errors import BundleError
from edgert.runtime.llm.contract import tap_name


class EagleSession:
    def __init__(self, target, entry: dict):
        """``target``: the decoder's session; ``entry``: the manifest's ``decoder.heads.eagle``."""
        bundle = target.bundle
        taps = entry.get("taps")
        if not isinstance(taps, list) or len(taps) != 3 or not all(isinstance(i, int) for i in taps):
            raise BundleError(f"{bundle.root}: decoder.heads.eagle.taps {taps!r}: expected the three tapped layers")
        self.taps = [tap_name(i) for i in taps]
        missing = [name for name in self.taps if name not in target.layout.extra_outputs]
        if missing:
            raise BundleError(f"{bundle.root}: the decoder graph has no {', '.join(missing)} output(s), which the EAGLE "
                              "head reads; re-export the bundle with --opt eagle=HEAD")
        self.draft = target.open_graph(entry["graph"])
        self.fc = target.open_backend(entry["fc_graph"])
        self.vocab_size = target.vocab_size
        if entry.get("draft_vocab") != self.draft.vocab_size:  # the manifest says what the graph computes
            raise BundleError(f"{bundle.root}: decoder.heads.eagle.draft_vocab {entry.get('draft_vocab')!r} does not "
                              f"match the draft graph's logits ({self.draft.vocab_size})")
        d2t = entry.get("d2t")
        self.ids = None if d2t is None else np.arange(len(d2t)) + np.asarray(d2t, np.int64)  # draft id -> target id
        if self.ids is not None and (len(self.ids) != self.draft.vocab_size or self.ids.min() < 0
                                     or self.ids.max() >= self.vocab_size):
            raise BundleError(f"{bundle.root}: decoder.heads.eagle.d2t does not map the draft's "
                              f"{self.draft.vocab_size} ids into the target's vocabulary of {self.vocab_size}")

    def new_cache(self, capacity: int):
        return self.draft.new_cache(capacity)

    def fuse(self, extra: dict[str, np.ndarray]) -> np.ndarray:
        """(S, hidden): the draft's input states of S positions, from the target's taps of them."""
        taps = np.concatenate([extra[name] for name in self.taps], axis=-1)[None]
        return self.fc.run({"taps": np.ascontiguousarray(taps, np.float32)})["hidden_states"][0]
