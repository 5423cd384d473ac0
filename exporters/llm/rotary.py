"""Rotary position embedding (RoPE, Su et al. 2021, "RoFormer") as one custom op, ``edgert::rotary``.

Why an op rather than the traced math: traced, RoPE is seven nodes per projection (two Slices,
Neg, Concat, two Muls, Add), 14 a layer, and on the CPU a decode step of a small int4 model pays
for the number of nodes nearly as much as for the weights (docs/benchmarks.md, "Low precision").
Each flavour picks its translation: the default flavour writes ONNX's ``RotaryEmbedding``
(opset 23), one node with an ONNX Runtime kernel; the TensorRT flavour writes the primitive ops,
because TensorRT's parser imports ``RotaryEmbedding`` only from 10.15 and the plugins run from
10.3 (exporters/llm/trt_flavour.py).

Contract: ``x`` (B, S, H*D), heads side by side as the projection writes them; ``cos``/``sin``
(B, S, D/2), the angles position * inverse frequency of each new token. Halves, not interleaved
pairs (Llama's ``rotate_half`` convention, which the Hugging Face checkpoints are trained with):
``y = x * cos‖cos + rotate_half(x) * sin‖sin`` per head.
"""

from __future__ import annotations

import torch


def rotary_math(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The reference computation (eager)."""
    b, s, width = x.shape
    half = cos.shape[-1]
    heads = x.view(b, s, width // (2 * half), 2 * half)
    x1, x2 = heads[..., :half], heads[..., half:]
    c, sn = cos[:, :, None], sin[:, :, None]
    return torch.cat([x1 * c - x2 * sn, x2 * c + x1 * sn], dim=-1).reshape(b, s, width)


@torch.library.custom_op("edgert::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return rotary_math(x, cos, sin)


@rotary.register_fake
def _(x, cos, sin):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _backward(ctx, grad):
    """Training MTP backpropagates through RoPE: a rotation's transpose is the rotation by the
    opposite angle."""
    cos, sin = ctx.saved_tensors
    return rotary(grad, cos, -sin), None, None


rotary.register_autograd(_backward, setup_context=_setup_context)


def _heads(x, cos) -> tuple[int, int]:
    half = cos.shape[-1]
    return x.shape[-1] // (2 * half), half


def onnx_rotary(x, cos, sin):
    """onnxscript translation: ONNX RotaryEmbedding (opset 23) on the 3-D layout, tables given
    per token (no position_ids input)."""
    from onnxscript import opset23 as op

    return op.RotaryEmbedding(x, cos, sin, num_heads=_heads(x, cos)[0])


def primitive_rotary(x, cos, sin):
    """onnxscript translation into primitive ops, for parsers without RotaryEmbedding."""
    from onnxscript import opset18 as op

    heads, half = _heads(x, cos)
    h = op.Reshape(x, op.Constant(value_ints=[0, 0, heads, 2 * half]))
    x1, x2 = op.Split(h, axis=-1, num_outputs=2)
    c, s = op.Unsqueeze(cos, [2]), op.Unsqueeze(sin, [2])
    y = op.Concat(op.Sub(op.Mul(x1, c), op.Mul(x2, s)), op.Add(op.Mul(x2, c), op.Mul(x1, s)), axis=-1)
    return op.Reshape(y, op.Constant(value_ints=[0, 0, heads * 2 * half]))
