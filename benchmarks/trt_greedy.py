"""Greedy decoding through the TensorRT flavour's decoder engine (edgert's plugins), token for token
against ONNX Runtime running the default flavour of the same checkpoint at the same precision.

    python benchmarks/trt_greedy.py --plugins LIB [--out DIR] [--tokens 24]

Needs a GPU, tensorrt, a CUDA torch and libedgert_trt_plugins.so built against that TensorRT. The
engine is driven directly: the caches are fixed-capacity device buffers bound as both
``past_key_values.*`` and ``present.*`` (the plugins write them in place), each pass feeds its
new tokens with their positions, the row's past length and the chain mask (runtime/llm/tree.py's
packed layout), and reads the logits of the last new token.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def export_pair(out: Path) -> tuple[Path, Path]:
    """One random-weights Llama checkpoint (head_dim 64, GQA 4:1), exported in both flavours, fp16."""
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_checkpoints import make_llama

    make_llama(out / "ckpt", hidden=256, heads=4, kv_heads=1)
    bundles = {}
    for backend in ("onnx", "trt"):
        bundles[backend] = out / f"bundle-{backend}"
        subprocess.run([sys.executable, "-m", "edgert", "export", "llama", "--checkpoint", str(out / "ckpt"), "--out",
                        str(bundles[backend]), "--flavour", backend, "--precision", "fp16", "--force"], check=True)
    return bundles["onnx"], bundles["trt"]


def pass_inputs(new: list[int], past: int) -> dict[str, np.ndarray]:
    """One pass of the TensorRT flavour's decoder: the new tokens after ``past`` cached ones."""
    from edgert.runtime.llm.tree import Tree

    t = len(new)
    return {"input_ids": np.array([new], np.int64), "position_ids": np.arange(past, past + t, dtype=np.int64)[None],
            "past_lengths": np.array([past], np.int32), "tree_mask": Tree(np.arange(-1, t - 1)).packed_mask(),
            "logit_positions": np.array([[t - 1]], np.int64)}


def greedy(run, prompt: list[int], count: int) -> list[int]:
    """``run(inputs) -> logits [1, 1, vocab]``, the caches kept by ``run`` itself."""
    past, new, generated = 0, list(prompt), []
    while len(generated) < count:
        token = int(np.argmax(run(pass_inputs(new, past))[0, -1]))
        generated.append(token)
        past, new = past + len(new), [token]
    return generated


def engine_runner(engine, capacity: int):
    """``run`` for :func:`greedy` over a TensorRT engine, the caches bound in place."""
    import tensorrt as trt
    import torch

    types = {trt.float16: torch.float16, trt.float32: torch.float32, trt.int32: torch.int32, trt.int64: torch.int64}
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    caches = {}
    for name in inputs:
        if name.startswith("past_key_values."):
            shape = engine.get_tensor_shape(name)
            caches[name] = torch.zeros(1, shape[1], capacity, shape[3], dtype=types[engine.get_tensor_dtype(name)],
                                       device="cuda")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()

    def run(values: dict) -> np.ndarray:
        feeds = {name: torch.from_numpy(values[name]).to("cuda", types[engine.get_tensor_dtype(name)]) for name in values}
        feeds.update(caches)
        for name in inputs:
            context.set_input_shape(name, tuple(feeds[name].shape))
            context.set_tensor_address(name, feeds[name].data_ptr())
        outputs = {}
        for name in names:
            if name in inputs:
                continue
            if name.startswith("present."):  # aliased: the same buffer as the cache it updates
                context.set_tensor_address(name, caches["past_key_values." + name[len("present."):]].data_ptr())
                continue
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)),
                                        dtype=types[engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
        stream.synchronize()
        return outputs["logits"].float().cpu().numpy()

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", type=Path, required=True, help="libedgert_trt_plugins.so")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "trt-greedy")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams
    from edgert.runtime.llm.tensorrt import build_decoder_engine

    onnx_bundle, trt_bundle = export_pair(args.out)
    prompt = [1, 17, 42, 99, 7, 250, 3, 12]
    want = Generator(onnx_bundle).generate(prompt, SamplingParams(max_new_tokens=args.tokens)).tokens
    engine = build_decoder_engine(trt_bundle, args.plugins, max_batch=1, max_tokens=64, capacity=256)
    got = greedy(engine_runner(engine, capacity=256), prompt, len(want))
    result = {"tokens": len(want), "onnxruntime": want, "tensorrt": got, "equal": got == want,
              "first_difference": next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
