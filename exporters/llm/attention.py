"""Decoder self-attention over a KV cache as one custom op, ``edgert::attention``.

Why a custom op rather than letting the exporter trace the math: the graph must carry one
attention node per layer whose contract the runtimes know (past in, present out, explicit
visibility mask), so that each export flavour can pick its kernel by translation alone. The
default flavour's default (``--opt kv_cache=in_place``) is ONNX Runtime's contrib
``GroupQueryAttention`` over a cache updated in place (:func:`in_place_attention`): the session
binds the cache once and a decode step copies nothing, as in onnxruntime-genai's graphs
(docs/benchmarks.md, "Low precision"). ``kv_cache=concat`` translates to the ONNX ``Attention``
op of opset 23 (:func:`onnx_attention`), which ONNX Runtime's CUDA EP runs at fp32 (its GQA takes
fp16/bf16 only) and TensorRT >= 10.14 imports natively.

Contract, shared by the eager reference below and every translation:

* ``q`` (B, S, Hq*D), ``k``/``v`` (B, S, Hkv*D): the new tokens as the projections write them,
  heads side by side, RoPE already applied. The 3-D layout is ONNX Attention's own (its
  ``q_num_heads``/``kv_num_heads`` attributes): no head reshapes or transposes around the node,
  eight nodes a layer fewer than the 4-D one (docs/benchmarks.md, "Low precision").
* ``mask`` (B, S, P+S) bool, True = visible: which past and new positions each new token sees
  (causal for prefill and decode, ancestors-and-self for a speculation tree).
* ``past_key``/``past_value`` (B, Hkv, P, D); P may be 0. They fix Hkv and D, and so Hq.
* returns ``y`` (B, S, Hq*D) and ``present_key``/``present_value`` = past ‖ new (B, Hkv, P+S, D).
* scores and softmax in fp32 whatever the input dtype (``softmax_precision`` = FLOAT in ONNX);
  scale 1/sqrt(D); query head h reads kv head h // (Hq / Hkv) (grouped, not tiled).
"""

from __future__ import annotations

import math

import torch

from .gqa import CONTRIB

ONNX_FLOAT = 1  # TensorProto.FLOAT, the value of Attention's softmax_precision attribute
INT32 = 6       # TensorProto.INT32


def heads(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, _ = x.shape
    return x.view(b, s, -1, dim).transpose(1, 2)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> (B, S, H*D), the inverse of :func:`heads`."""
    b, h, s, d = y.shape
    return y.transpose(1, 2).reshape(b, s, h * d)


def attention_heads(q, k, v, mask, past_key, past_value):
    """The computation on (B, H, S, D) heads: y (B, Hq, S, D), key, value."""
    key, value = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
    rep = q.shape[1] // key.shape[1]
    kk = key.repeat_interleave(rep, dim=1) if rep > 1 else key
    vv = value.repeat_interleave(rep, dim=1) if rep > 1 else value
    scores = (q.float() @ kk.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.where(mask[:, None].any(-1, keepdim=True), probs, 0.0)  # a row that sees nothing: 0, not NaN
    return (probs @ vv.float()).to(q.dtype), key, value


def attention_math(q, k, v, mask, past_key, past_value):
    """The reference computation (eager, differentiable), on the contract's 3-D layout."""
    dim = past_key.shape[3]
    y, key, value = attention_heads(heads(q, dim), heads(k, dim), heads(v, dim), mask, past_key, past_value)
    return merge_heads(y), key, value


@torch.library.custom_op("edgert::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, past_key: torch.Tensor,
              past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, key, value = attention_math(q, k, v, mask, past_key, past_value)
    return y, key.clone(), value.clone()


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*[t for i, t in enumerate(inputs) if i != 3], inputs[3])


def _backward(ctx, grad_y, grad_key, grad_value):
    """Training the speculative parts (MTP) backpropagates through attention: recompute and
    differentiate the reference math."""
    q, k, v, past_key, past_value, mask = ctx.saved_tensors
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v, past_key, past_value)]
    with torch.enable_grad():
        outputs = attention_math(leaves[0], leaves[1], leaves[2], mask, leaves[3], leaves[4])
        grads = torch.autograd.grad(outputs, leaves, (grad_y, grad_key, grad_value), allow_unused=True)
    return grads[0], grads[1], grads[2], None, grads[3], grads[4]


attention.register_autograd(_backward, setup_context=_setup_context)


@attention.register_fake
def _(q, k, v, mask, past_key, past_value):
    dim = past_key.shape[3]
    return (torch.empty_like(q), torch.cat([past_key, heads(k, dim)], dim=2),
            torch.cat([past_value, heads(v, dim)], dim=2))


def onnx_attention(q, k, v, mask, past_key, past_value):
    """onnxscript translation: ONNX Attention (opset 23) on 3-D inputs, bool mask broadcast over
    the heads."""
    from onnxscript import opset23 as op

    kv_heads, dim = past_key.shape[1], past_key.shape[3]
    y, present_key, present_value, _ = op.Attention(
        q, k, v, op.Unsqueeze(mask, [1]), past_key, past_value, q_num_heads=q.shape[2] // dim, kv_num_heads=kv_heads,
        softmax_precision=ONNX_FLOAT)
    return y, present_key, present_value


def register_contrib_schema() -> None:
    """ONNX Runtime's GroupQueryAttention schema (the inputs edgert feeds, up to
    ``attention_bias``), registered with onnx so that onnxscript can emit the node and
    ``onnx.checker`` check it; ONNX Runtime brings its own. Idempotent."""
    from onnx import defs

    if defs.has("GroupQueryAttention", CONTRIB):
        return
    P, A, option = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute, defs.OpSchema.FormalParameterOption
    Single, Opt = option.Single, option.Optional
    names = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
             "sin_cache", "position_ids", "attention_bias")
    kinds = {"seqlens_k": "M", "total_sequence_length": "M", "position_ids": "tensor(int64)"}
    required = ("query", "seqlens_k", "total_sequence_length")
    defs.register_schema(defs.OpSchema(
        "GroupQueryAttention", CONTRIB, 1, doc="ONNX Runtime's grouped-query attention (contrib op)",
        inputs=[P(n, kinds.get(n, "T"), param_option=Single if n in required else Opt) for n in names],
        outputs=[P("output", "T"), P("present_key", "T"), P("present_value", "T")],
        type_constraints=[("T", ["tensor(float16)", "tensor(bfloat16)", "tensor(float)"], "activations and cache"),
                          ("M", ["tensor(int32)"], "lengths")],
        attributes=[A("num_heads", defs.OpSchema.AttrType.INT, "query heads"),
                    A("kv_num_heads", defs.OpSchema.AttrType.INT, "key/value heads")]))


def in_place_attention(q, k, v, mask, past_key, past_value):
    """onnxscript translation: ONNX Runtime's ``com.microsoft.GroupQueryAttention`` on the same
    3-D inputs, for a cache updated in place.

    Fed past and present as one (B, Hkv, capacity, D) buffer (IO binding), GQA writes the new
    K/V at position total - S and reads the first total positions: nothing is copied or
    re-bound per token. Fed the contract's dense past of P positions it returns past ‖ new like
    Attention does (the export parity check runs it that way). Its bookkeeping comes from the
    mask's width (total = P + S; ``seqlens_k`` = total - 1 for every row) and the mask becomes
    its additive ``attention_bias`` (0 visible, -inf hidden) broadcast over heads; GQA's own
    causal rule (new token i sees new tokens j <= i) only repeats what every edgert mask says,
    a tree's included (ancestors come first)."""
    from onnxscript import opset23 as op
    from onnxscript import values

    register_contrib_schema()
    contrib = values.Opset(CONTRIB, 1)
    kv_heads, dim = past_key.shape[1], past_key.shape[3]
    total = op.Shape(mask, start=2, end=3)                                                      # [1]
    seqlens_k = op.Cast(op.Expand(op.Sub(total, op.Constant(value_ints=[1])), op.Shape(mask, start=0, end=1)), to=INT32)
    bias = op.Where(op.Unsqueeze(mask, [1]), op.CastLike(op.Constant(value_float=0.0), q),
                    op.CastLike(op.Constant(value_float=float("-inf")), q))
    y, present_key, present_value = contrib.GroupQueryAttention(
        q, k, v, past_key, past_value, seqlens_k, op.Cast(op.Squeeze(total), to=INT32), None, None, None, bias,
        num_heads=q.shape[2] // dim, kv_num_heads=kv_heads, _outputs=3)
    return y, present_key, present_value


def translations(kv_cache: str = "in_place") -> dict:
    """The default flavour's ops: the attention op of ``kv_cache`` (``in_place``: GroupQueryAttention;
    ``concat``: Attention-23) and ONNX RotaryEmbedding."""
    from .rotary import onnx_rotary

    attend = in_place_attention if kv_cache == "in_place" else onnx_attention
    return {torch.ops.edgert.attention.default: attend, torch.ops.edgert.rotary.default: onnx_rotary}
