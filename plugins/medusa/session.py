"""The bundle's ``medusa`` graph on the target's backend: final hidden state -> every head's logits."""

from __future__ import annotations

import numpy as np

from edgert.runtime.errors import BundleError


class MedusaSession:
    def __init__(self, target, entry: dict):
        """``target``: the decoder's session (bundle, backend, device, threads); ``entry``: the
        manifest's ``decoder.heads.medusa``."""
        bundle = target.bundle
        num_heads = entry.get("num_heads")
        if not isinstance(num_heads, int) or not 1 <= num_heads <= 64:
            raise BundleError(f"{bundle.root}: decoder.heads.medusa.num_heads {num_heads!r}: expected an integer from 1 to 64")
        self.num_heads = num_heads
        self.backend = target.open_backend(entry["graph"])

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        """hidden (H,) -> (heads, vocab)."""
        feeds = {"hidden_states": np.ascontiguousarray(hidden, np.float32).reshape(1, 1, -1)}
        return self.backend.run(feeds)["medusa_logits"][0, 0]
