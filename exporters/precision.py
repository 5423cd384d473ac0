"""One precision vocabulary for both halves of edgert: ``fp32 | fp16 | int8 | int4 | stored``.

* ``fp32``: the exported graph as it is; parity with PyTorch within 1e-4.
* ``fp16``: fp16 weights and activations (norms and softmax in fp32, I/O fp32); parity 1e-2.
* ``int8`` for a video model: static quantization in QDQ form, calibrated on clips the user
  gives (``--calibration DATA``), see :mod:`.qdq`. A recognizer has no data-free int8: static
  activation ranges come from data or are guesses, and a guess is not a default.
* ``int8`` / ``int4`` for a decoder: block-wise weight-only quantization of every MatMul weight
  (ONNX Runtime's ``MatMulNBits``), data-free round-to-nearest by default, see
  :mod:`.llm.weights`. Activations and the KV cache stay fp32.
* ``stored`` for a decoder from a GGUF file (its default): the file's own blocks, transcoded
  without a second rounding where ONNX Runtime's ops can express them, see :mod:`.llm.stored`.
* ``int4`` for a video model is refused: neither ONNX Runtime's CPU kernels nor TensorRT run
  4-bit convolutions.

Quantized graphs are made from the fp32 graph after its parity check, so ``parity`` in the
manifest is still the fp32 graph's; ``quantization`` records what was done (method, parameters,
the calibration data's sha256) and the accuracy the export measured and enforced. Each knob is
an ``--quant KEY=VALUE``; which knobs exist depends on the model kind and the precision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import sha256_file
from edgert.runtime.errors import EdgertError
from edgert.runtime.options import Option, boolean, positive_int, probability, resolve_options

PRECISIONS = ("fp32", "fp16", "int8", "int4", "stored")


def _number(valid, name: str, kind=float):
    """A ``--quant`` value parser: ``kind(text)``, refused unless ``valid``; ``name`` is what the
    error says was expected."""
    def parse(text: str):
        value = kind(text)
        if not valid(value):
            raise ValueError(text)
        return value

    parse.__name__ = name
    return parse


_fraction = _number(lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")
_ratio = _number(lambda v: v >= 1.0, "a number >= 1")
_percent = _number(lambda v: 50.0 <= v <= 100.0, "a percentile from 50 to 100")
_block = _number(lambda v: v >= 16 and not v & (v - 1), "a power of two >= 16", int)

# Static int8 for video models (QDQ). The defaults were measured (docs/benchmarks.md): min-max
# ranges kept every held-out prediction of the tiny trained models and of the ResNet-50 runs.
VIDEO_INT8 = {
    "calibration_method": Option("minmax", "activation ranges: min-max, entropy (KL) or a percentile", str,
                                 ("minmax", "entropy", "percentile")),
    "percentile": Option(99.999, "the percentile for calibration_method=percentile", _percent),
    "per_channel": Option(True, "one weight scale per output channel (false: per tensor)", boolean),
    "calibration_batch": Option(1, "inputs per calibration run (clips, or steps of a streaming graph)", positive_int),
    "holdout": Option(0.25, "fraction of DATA kept out of calibration for the accuracy check", _fraction),
    "min_agreement": Option(0.98, "least top-1 agreement with the fp32 graph on the held-out inputs it decides "
                            "clearly (see near_tie)", probability),
    "near_tie": Option(0.01, "inputs whose fp32 top-two probabilities are closer than this are not counted (any "
                       "rounding may flip a tie; fp16 would too)", probability),
    "min_cosine": Option(0.99, "feature extractors: least cosine similarity with the fp32 features", probability),
    "keep_float": Option("", "more operator types to leave in float, comma separated (e.g. Slice,Concat)", str),
}

# Weight-only int8 / int4 for decoders. Tolerances: docs/benchmarks.md has the figures they
# were set from (tiny test checkpoints and the Qwen2.5-0.5B-shaped benchmark model).
DECODER_WEIGHTS = {
    "method": Option("rtn", "rtn (round to nearest, data-free), hqq (half-quadratic, data-free, int4) or gptq "
                     "(int4, needs --calibration TEXTFILES)", str, ("rtn", "hqq", "gptq")),
    "block_size": Option(32, "weights per scale along the input dimension", _block),
    "symmetric": Option(True, "symmetric blocks (false: a zero point per block)", boolean),
    "accuracy_level": Option(4, "MatMulNBits' compute type: 0 as the input (fp32), 4 int8 activations (fastest on "
                             "CPUs with VNNI/AMX; ONNX Runtime's and onnxruntime-genai's CPU choice)", int, (0, 1, 2, 3, 4)),
    "embedding": Option("quantized", "int4: the token embedding as GatherBlockQuantized too, or left float", str,
                        ("quantized", "float")),
    "min_agreement": Option(None, "least greedy (teacher-forced top-1) agreement with fp32 at the positions it decides "
                            "clearly (see near_tie); default 0.95 for int8, 0.85 for int4", probability),
    "near_tie": Option(0.01, "positions whose fp32 top-two probabilities are closer than this are not counted",
                       probability),
    "max_perplexity_ratio": Option(None, "largest perplexity relative to fp32 on the held-out text; default 1.02 for "
                                   "int8, 1.15 for int4", _ratio),
}
# A GGUF as stored: the same graph over the same values (exact types), or 8-bit re-rounding of
# the types with no exact form; held to int8's bounds against the fp32 graph of its values.
STORED = {
    "accuracy_level": Option(0, "MatMulNBits' compute type: 0 as the input (fp32: the file's values, perplexity "
                             "as fp32's), 4 int8 activations (faster on CPUs with VNNI/AMX, +1.1 % perplexity on "
                             "SmolLM2)", int, (0, 4)),
    "q8": Option("int8", "how 8-bit blocks compute: int8 (int8 activations, llama.cpp's Q8_0 dot product, the fast "
                 "kernel) or fp32 (the stored values exactly, as two 4-bit halves at fp32; 2-4x that op's time)", str,
                 ("int8", "fp32")),
    **{k: DECODER_WEIGHTS[k] for k in ("min_agreement", "near_tie", "max_perplexity_ratio")},
}
DEFAULT_AGREEMENT = {"int8": 0.95, "int4": 0.85}
DEFAULT_PERPLEXITY_RATIO = {"int8": 1.02, "int4": 1.15}


def resolve_quantization(kind: str, precision: str, backend: str, given: dict[str, str],
                         calibration: str | None) -> dict[str, Any] | None:
    """The ``--quant`` knobs for ``precision`` on a model of ``kind`` (None: not quantized),
    every combination that cannot run refused with one line."""
    if precision not in PRECISIONS:
        raise EdgertError(f"--precision {precision}: expected one of {list(PRECISIONS)}")
    if precision in ("fp32", "fp16"):
        if given:
            raise EdgertError(f"--quant {next(iter(given))}=...: quantization knobs apply to --precision int8 or int4, "
                              f"not {precision}")
        if calibration:
            raise EdgertError(f"--calibration: only --precision int8 / int4 use calibration data, not {precision}")
        return None
    if kind == "detector":
        if precision == "int4":
            raise EdgertError("--precision int4 quantizes LLM decoder weights; video models export fp32, fp16 or int8 "
                              "(no 4-bit convolution kernels in ONNX Runtime or TensorRT)")
        if not calibration:
            raise EdgertError("--precision int8 for a video model needs --calibration DATA: a folder of clips (videos, "
                              "frame folders, .npy) like the ones it will see; static int8 takes its activation ranges "
                              "from them")
        return resolve_options("--quant for int8 video models", VIDEO_INT8, given, "--quant")
    if precision == "stored" and kind == "detector":
        raise EdgertError("--precision stored keeps a GGUF decoder's own blocks; video models export fp32, fp16 or int8")
    if backend == "trt":
        raise EdgertError(f"--flavour trt --precision {precision}: the TensorRT flavour of decoders runs fp16 "
                          "(weight-only int4/int8 for it is not built yet); export --flavour onnx --precision "
                          f"{precision} for ONNX Runtime, or --flavour trt --precision fp16")
    if precision == "stored":
        if calibration:
            raise EdgertError("--calibration: --precision stored keeps the file's blocks and needs no calibration; "
                              "the accuracy check reads the built-in passage")
        knobs = resolve_options("--quant for stored decoders", STORED, given, "--quant")
        knobs["min_agreement"] = DEFAULT_AGREEMENT["int8"] if knobs["min_agreement"] is None else knobs["min_agreement"]
        if knobs["max_perplexity_ratio"] is None:
            knobs["max_perplexity_ratio"] = DEFAULT_PERPLEXITY_RATIO["int8"]
        return knobs
    knobs = resolve_options(f"--quant for {precision} decoders", DECODER_WEIGHTS, given, "--quant")
    if knobs["method"] == "gptq" and not calibration:
        raise EdgertError("--quant method=gptq needs --calibration TEXTFILES (text the model will see)")
    if knobs["method"] in ("hqq", "gptq") and precision != "int4":
        raise EdgertError(f"--quant method={knobs['method']}: ONNX Runtime's {knobs['method'].upper()} quantizer writes "
                          "4-bit weights; use method=rtn for int8")
    if precision == "int8" and "embedding" in given and knobs["embedding"] == "quantized":
        raise EdgertError("--quant embedding=quantized: ONNX Runtime's GatherBlockQuantized takes 4-bit tables only; "
                          "int8 keeps the embedding float")
    if precision == "int8":
        knobs["embedding"] = "float"
    if knobs["min_agreement"] is None:
        knobs["min_agreement"] = DEFAULT_AGREEMENT[precision]
    if knobs["max_perplexity_ratio"] is None:
        knobs["max_perplexity_ratio"] = DEFAULT_PERPLEXITY_RATIO[precision]
    return knobs


def calibration_digest(root: Path, files: list[Path]) -> str:
    """sha256 over the calibration files' names (relative to ``root``) and contents, in order:
    the same data gives the same digest wherever it lies."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def agreement(reference_logits: np.ndarray, chosen: np.ndarray, near_tie: float) -> dict[str, Any]:
    """Top-1 agreement of ``chosen`` (token or class ids) with the reference's argmax, over all
    positions and over the decisive ones: where the reference's top two probabilities differ by
    at least ``near_tie`` (a near tie flips on any rounding, so it says nothing about a method)."""
    z = reference_logits - reference_logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    top2 = np.sort(probs, -1)[..., -2:]
    decisive = (top2[..., 1] - top2[..., 0]) >= near_tie
    agree = reference_logits.argmax(-1) == chosen
    return {"top1_agreement": float(agree.mean()), "decisive": int(decisive.sum()),
            "decisive_agreement": float(agree[decisive].mean()) if decisive.any() else float("nan")}


def split_holdout(items: list, fraction: float) -> tuple[list, list]:
    """Every k-th item (k = round(1 / fraction)) held out, the rest for calibration; deterministic,
    spread over the sorted list so that a folder sorted by class holds out every class."""
    step = max(2, round(1 / fraction))
    held = items[step - 1::step]
    return [x for i, x in enumerate(items) if (i + 1) % step], held


__all__ = ["PRECISIONS", "VIDEO_INT8", "DECODER_WEIGHTS", "resolve_quantization", "calibration_digest", "split_holdout",
           "agreement"]
