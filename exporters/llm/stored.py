"""A GGUF's weights as stored: its blocks become ONNX Runtime's block-quantized ops with no
second rounding (``edgert export llama --checkpoint FILE.gguf``, ``--precision stored``, the
default for a GGUF).

llama.cpp's types and what each becomes (blocks of 32 along the input dimension, the layout of
``MatMulNBits``' B and of ``GatherBlockQuantized``'s rows):

* ``Q8_0`` (x = d·q, q int8): 8-bit blocks, q + 128 with the default zero point 128;
* ``Q4_0`` (x = d·(q - 8)): 4-bit blocks with the default zero point 8;
* ``Q4_1`` (x = d·q + m) and ``Q4_K`` (x = (d·sc)·q - dmin·m per 32 of a 256 super-block):
  4-bit blocks with zero point 0 and scale d (d·sc), and the block's minimum m (-dmin·m) as a
  second term: ``y = MatMulNBits(x) + BlockSum(x) @ M``, where BlockSum adds each block's 32
  activations. That is how llama.cpp's own Q4_1 dot product computes it (d·Σq·x + m·Σx). A
  float zero point (-m/d) would also express it, but ONNX Runtime's CPU kernel dequantizes the
  whole matrix on every call for float zero points (12x slower per call here).
* the token embedding the same way through ``GatherBlockQuantized`` (bits 8 or 4), a minimum
  added per block after it;
* ``Q5_0``, ``Q5_1``, ``Q5_K``, ``Q6_K`` (no exact form in those ops): re-rounded to 8-bit
  blocks of 32 (round to nearest, symmetric) from the dequantized values; the manifest says so
  per tensor and the accuracy gate covers it;
* F32 / F16 / BF16 weights stay float.

The scales are the file's fp16 values in fp32 (exact), so dequantizing what is stored gives the
``gguf`` package's ``dequantize`` bit for bit for the exact types (tested). The graph is the
fp32 graph exported from the dequantized weights; each constant MatMul / Gather weight is found
by its content (a digest of its fp32 bytes) and replaced. ``accuracy_level`` 0 (default) keeps
fp32 compute inside MatMulNBits; 4 quantizes activations to int8 per block (faster on CPUs with
VNNI). 8-bit blocks run at accuracy_level 4 by default (``q8="int8"``): ONNX Runtime 1.32's CPU
kernel has no fp32 path for them and dequantizes the whole matrix on every call instead
(SmolLM2's Q8_0 lm_head: 111 ms a call at level 0, 0.84 ms at level 4, here); int8 activations
against 8-bit weights is also how llama.cpp computes a Q8_0 dot product. ``q8="fp32"`` keeps
the stored values exact at fp32 compute instead: u = q + 128 = 16·hi + lo, so
d·(u - 128) = 16d·(hi - 8) + d·lo, two 4-bit MatMulNBits at level 0 added (the same bytes; 2x
the op's time for one row, 4x for a verify's nine, measured on SmolLM2's lm_head).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.errors import EdgertError

from .gguf import EXACT_TYPES, FLOAT_TYPES, GGUFFile, Tensor
from .gqa import CONTRIB, pack_qkv
from .weights import drop_unused_initializers, minimum_term, zero_points

BLOCK = 32


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


# ---- blocks ------------------------------------------------------------------------------------

def _halves(raw: np.ndarray) -> np.ndarray:
    """Nibbles of GGML's 4-bit layout (element j low nibble, j + 16 high nibble of byte j) as
    values in element order, (blocks, 32) uint8."""
    return np.concatenate([raw & 0x0F, raw >> 4], axis=-1)


def _pack4(q: np.ndarray) -> np.ndarray:
    """Element-order 4-bit values (..., 32) into MatMulNBits' layout: element 2i in the low nibble
    of byte i, 2i + 1 in the high one."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


class Stored:
    """One weight's stored form: ``q`` (rows, blocks, 32) unsigned values, ``scale`` (rows,
    blocks) fp32, ``zero`` the zero point every block has (None: ``bits``' default), ``mins``
    (rows, blocks) fp32 or None; ``exact``: whether it reproduces the file's values."""

    def __init__(self, bits: int, q: np.ndarray, scale: np.ndarray, zero: int | None, mins: np.ndarray | None,
                 exact: bool):
        self.bits, self.q, self.scale, self.zero, self.mins, self.exact = bits, q, scale, zero, mins, exact

    def dequantize(self) -> np.ndarray:
        """The values the ops compute with, (rows, columns) fp32: (q - zero)·scale (+ min)."""
        zero = (1 << (self.bits - 1)) if self.zero is None else self.zero
        values = (self.q.astype(np.float32) - np.float32(zero)) * self.scale[..., None]
        if self.mins is not None:
            values = values + self.mins[..., None]
        return values.reshape(self.q.shape[0], -1)


def stored_form(tensor: Tensor) -> Stored:
    """``tensor``'s blocks as :class:`Stored`, rows in the model's order."""
    rows = tensor.shape[0]
    kind = tensor.type
    blocks = tensor.row_blocks()
    if kind == "Q8_0":
        b = blocks.reshape(rows, -1, 34)
        scale = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = (b[..., 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return Stored(8, q, scale, None, None, True)
    if kind == "Q4_0":
        b = blocks.reshape(rows, -1, 18)
        scale = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        return Stored(4, _halves(b[..., 2:]), scale, None, None, True)
    if kind == "Q4_1":
        b = blocks.reshape(rows, -1, 20)
        scale = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        mins = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        return Stored(4, _halves(b[..., 4:]), scale, 0, mins, True)
    if kind == "Q4_K":
        from gguf.quants import Q4_K

        b = blocks.reshape(rows, -1, 144)
        n = rows * b.shape[1]
        flat = b.reshape(n, 144)
        d = flat[:, :2].copy().view(np.float16).astype(np.float32)
        dmin = flat[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, m = Q4_K.get_scale_min(flat[:, 4:16])
        scale = (d * sc.astype(np.float32)).reshape(rows, -1)            # as gguf computes d·sc
        mins = -(dmin * m.astype(np.float32)).reshape(rows, -1)           # x = d·sc·q - dmin·m
        qs = flat[:, 16:].reshape(n, 4, 32)                               # 64 values per 32 bytes
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, 8, 32)  # sub-block 2j low, 2j+1 high
        return Stored(4, q.reshape(rows, -1, 32), scale, 0, mins, True)
    values = tensor.dequantize()  # Q5_*, Q6_K: the nearest edgert format, 8-bit blocks, re-rounded
    if values.shape[1] % BLOCK:
        raise EdgertError(f"{tensor.name}: {values.shape[1]} columns are not a multiple of {BLOCK}")
    v = values.reshape(rows, -1, BLOCK)
    scale = np.abs(v).max(-1) / np.float32(127)
    q = np.rint(np.divide(v, scale[..., None], out=np.zeros_like(v), where=scale[..., None] > 0))
    return Stored(8, (q.astype(np.int16) + 128).astype(np.uint8), scale.astype(np.float32), None, None, False)


def _concat(forms: list[Stored]) -> Stored:
    """Siblings (q‖k‖v, gate‖up) side by side along the output rows."""
    if len(forms) == 1:
        return forms[0]
    mins = None if forms[0].mins is None else np.concatenate([f.mins for f in forms])
    return Stored(forms[0].bits, np.concatenate([f.q for f in forms]), np.concatenate([f.scale for f in forms]),
                  forms[0].zero, mins, all(f.exact for f in forms))


def _kind(form: Stored) -> tuple:
    return (form.bits, form.zero, form.mins is not None)


# ---- the graph ---------------------------------------------------------------------------------

def transcode_graph(path: Path, out: Path, gguf: GGUFFile, accuracy_level: int = 0,
                    q8: str = "int8") -> dict[str, Any]:
    """Write ``path`` (the fp32 graph of ``gguf``'s dequantized weights) with every weight the
    file stores in blocks as those blocks to ``out``; returns the ``quantization`` record.
    ``accuracy_level`` is 4-bit blocks' compute type, ``q8`` 8-bit blocks' (module docstring)."""
    import onnx
    from onnx import numpy_helper

    from ..graph import EXTERNAL_DATA_BYTES
    from .weights import fold_biases, fuse_residual_norms, merge_siblings, untie

    model = onnx.load(str(path))
    fp32_bytes = sum(i.ByteSize() for i in model.graph.initializer)
    untied = untie(model)
    by_digest: dict[str, tuple[str, Tensor]] = {}
    for name, tensor in gguf.tensors.items():
        if len(tensor.shape) == 2 and tensor.type not in FLOAT_TYPES:
            values = tensor.dequantize()
            by_digest[_digest(values.T)] = ("MatMul", name)
            by_digest[_digest(values)] = ("Gather", name)
    # The weights' initializers take their tensors' names, so that siblings merged below say whom
    # they hold ("q+k+v").
    inits = {i.name: i for i in model.graph.initializer}
    renamed: dict[str, str | None] = {}  # original initializer name -> its tensor's (None: not stored)
    for node in model.graph.node:
        slot = 1 if node.op_type == "MatMul" else 0 if node.op_type == "Gather" else None
        if slot is None or len(node.input) != 2 or node.input[slot] not in inits:
            continue
        original = node.input[slot]
        if original not in renamed:
            init = inits[original]
            found = by_digest.get(_digest(numpy_helper.to_array(init))) if len(init.dims) == 2 else None
            renamed[original] = f"{found[1]}@{node.op_type}" if found and found[0] == node.op_type else None
            if renamed[original]:
                init.name = renamed[original]
        if renamed[original]:
            node.input[slot] = renamed[original]
    forms = {name: stored_form(gguf.tensors[name]) for name in gguf.tensors
             if len(gguf.tensors[name].shape) == 2 and gguf.tensors[name].type not in FLOAT_TYPES}
    stored_names = {f"{name}@MatMul" for name in forms}

    def mergeable(names: list[str]) -> bool:  # one op per group: siblings of the same stored kind
        kinds = {_kind(forms[n.split("@")[0]]) if n in stored_names else None for n in names}
        return len(kinds) == 1 and None not in kinds

    merged = merge_siblings(model, mergeable)
    replaced, records = _replace(model, forms, accuracy_level, q8)
    missing = sorted(set(forms) - replaced)
    if missing:
        raise EdgertError(f"{gguf.path}: the exported graph does not use the stored weight {missing[0]} as a plain "
                          "MatMul or Gather; cannot transcode it as stored (export with --precision fp32)")
    folded, fused, packed = fold_biases(model), fuse_residual_norms(model), pack_qkv(model)
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(CONTRIB, 1))
    weights = sum(i.ByteSize() for i in model.graph.initializer)
    onnx.save(model, str(out), save_as_external_data=weights > EXTERNAL_DATA_BYTES, location=f"{out.name}.data")
    ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized", "MatMul", "Gather"):
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    exact = sorted(n for n, r in records.items() if r == "exact")
    rerounded = sorted(n for n, r in records.items() if r != "exact")
    return {"method": "as stored: the GGUF's blocks transcoded, no second rounding where the type allows",
            "format": "MatMulNBits + GatherBlockQuantized (+ per-block minimums)",
            "source": {"file": gguf.path.name, "types": gguf.file_type},
            "weights": f"blocks of {BLOCK}; per tensor: {len(exact)} exact, {len(rerounded)} re-rounded to 8-bit",
            "activations": _activations(accuracy_level, q8),
            "params": {"accuracy_level": accuracy_level, "q8": q8, "untied_lm_head": untied > 0, "merged_matmuls": merged,
                       "folded_biases": folded, "fused_residual_norms": fused, "packed_qkv": packed},
            "tensors": {n: f"{gguf.tensors[n].type} {records[n]}" for n in sorted(records)},
            "ops": ops, "weight_bytes": int(weights), "fp32_weight_bytes": int(fp32_bytes)}


def _activations(accuracy_level: int, q8: str) -> str:
    int8 = [what for what, on in (("4-bit", accuracy_level == 4), ("8-bit", q8 == "int8")) if on]
    return "fp32" + (f"; int8 inside MatMulNBits for {' and '.join(int8)} blocks" if int8 else " throughout")


def _replace(model, forms: dict[str, Stored], accuracy_level: int, q8: str) -> tuple[set[str], dict[str, str]]:
    """Each MatMul / Gather over renamed weights becomes the stored ops, in place."""
    from onnx import helper, numpy_helper

    replaced: set[str] = set()
    records: dict[str, str] = {}
    block_sums: dict[str, str] = {}
    new_inits = []

    def constant(name: str, array: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    for node in list(model.graph.node):
        slot = 1 if node.op_type == "MatMul" else 0 if node.op_type == "Gather" else None
        if slot is None or len(node.input) != 2:
            continue
        parts = node.input[slot].split("+")
        names = [p.rsplit("@", 1)[0] for p in parts]
        if not all(p.endswith(f"@{node.op_type}") and p.rsplit("@", 1)[0] in forms for p in parts):
            continue
        form = _concat([forms[n] for n in names])
        for n in names:
            records[n] = "exact" if forms[n].exact else "re-rounded to 8-bit"
        replaced.update(names)
        base = node.input[slot]
        rows, blocks = form.scale.shape
        at = list(model.graph.node).index(node)
        nodes = []
        if node.op_type == "MatMul":
            x, out = node.input[0], node.output[0] if form.mins is None else f"{base}.nbits"
            if form.bits == 4:
                nodes.append(_matmul_nbits(x, base, form.q, form.scale, form.zero, 4, accuracy_level, out, constant))
            elif q8 == "int8":
                nodes.append(_matmul_nbits(x, base, form.q, form.scale, None, 8, 4, out, constant))
            else:  # u = 16·hi + lo: d·(u - 128) = 16d·(hi - 8) + d·lo, both at fp32 compute
                hi, lo = f"{base}.hi", f"{base}.lo"
                nodes += [_matmul_nbits(x, hi, form.q >> 4, form.scale * np.float32(16), None, 4, 0, hi, constant),
                          _matmul_nbits(x, lo, form.q & 0x0F, form.scale, 0, 4, 0, lo, constant),
                          helper.make_node("Add", [hi, lo], [out])]
            if form.mins is not None:
                nodes += minimum_term(x, out, node.output[0], base, form.mins, BLOCK, block_sums, constant)
        else:
            data = form.q if form.bits == 8 else _pack4(form.q)
            inputs = [constant(f"{base}.q", data.reshape(rows, -1)), node.input[1], constant(f"{base}.scales", form.scale)]
            if form.zero is not None:
                inputs.append(constant(f"{base}.zeros", zero_points(form.zero, rows, blocks, form.bits).reshape(rows, -1)))
            out = node.output[0] if form.mins is None else f"{base}.dequantized"
            nodes.append(helper.make_node("GatherBlockQuantized", inputs, [out], name=f"{base}.gather", domain=CONTRIB,
                                          bits=form.bits, block_size=BLOCK, gather_axis=0, quantize_axis=1))
            if form.mins is not None:
                shape = constant(f"{base}.block_shape", np.asarray([0, 0, blocks, BLOCK], np.int64))
                flat = constant(f"{base}.flat_shape", np.asarray([0, 0, blocks * BLOCK], np.int64))
                axes = constant(f"{base}.min_axes", np.asarray([-1], np.int64))
                nodes += [helper.make_node("Reshape", [out, shape], [f"{base}.blocks"]),
                          helper.make_node("Gather", [constant(f"{base}.mins", form.mins), node.input[1]],
                                           [f"{base}.row_mins"]),
                          helper.make_node("Unsqueeze", [f"{base}.row_mins", axes], [f"{base}.row_mins_1"]),
                          helper.make_node("Add", [f"{base}.blocks", f"{base}.row_mins_1"], [f"{base}.with_mins"]),
                          helper.make_node("Reshape", [f"{base}.with_mins", flat], [node.output[0]])]
        model.graph.node.remove(node)
        for offset, new in enumerate(nodes):
            model.graph.node.insert(at + offset, new)
    model.graph.initializer.extend(new_inits)
    drop_unused_initializers(model)
    return replaced, records


def _matmul_nbits(x: str, base: str, q: np.ndarray, scale: np.ndarray, zero: int | None, bits: int, level: int,
                  out: str, constant):
    """One MatMulNBits node, x @ the blocks (q - zero)·scale, its constants made by ``constant``."""
    from onnx import helper

    rows, blocks = scale.shape
    inputs = [x, constant(f"{base}.q", q if bits == 8 else _pack4(q)), constant(f"{base}.scales", scale.reshape(-1))]
    if zero is not None:
        inputs.append(constant(f"{base}.zeros", zero_points(zero, rows, blocks, bits)))
    return helper.make_node("MatMulNBits", inputs, [out], name=f"{base}.nbits", domain=CONTRIB, K=blocks * BLOCK,
                            N=rows, bits=bits, block_size=BLOCK, accuracy_level=level)
