"""PyTorch eager side of ``edgert bench --compare torch``."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from edgert.runtime.bundle import Bundle, GraphSpec
from edgert.runtime.host import get_host


def torch_runner(bundle: Bundle, graph: GraphSpec, feeds: dict[str, np.ndarray], threads: int) -> tuple[Callable, str]:
    """Rebuild the bundle's PyTorch model from its manifest (same plugin, options and seed;
    the checkpoint too when it is still on disk) and return a callable running it eagerly."""
    import torch

    torch.set_num_threads(threads)
    model_info = bundle.manifest["model"]
    plugin = get_host().get(bundle.kind, bundle.plugin_name).obj
    ckpt = model_info.get("checkpoint")
    checkpoint = ckpt["path"] if ckpt and os.path.isfile(ckpt["path"]) else None
    torch.manual_seed(model_info["seed"])
    built = plugin.build(dict(model_info["options"]), checkpoint)
    module = (built[graph.name] if isinstance(built, dict) else built).eval()
    args = [torch.from_numpy(feeds[t.name]) for t in graph.inputs]
    note = "same threads, same inputs; " + ("weights from the checkpoint" if checkpoint else
                                            "weights re-initialised from the manifest's seed")

    def run():
        with torch.inference_mode():
            return module(*args)

    return run, note
