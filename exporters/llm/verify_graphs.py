"""The verification op (:mod:`edgert.runtime.llm.verify`) as ONNX standard-op graphs that ONNX
Runtime runs beside the decoder graph; written into every decoder bundle.

Walking a tree is sequential, but acceptance is not: a node is accepted when no node on its
root path is rejected, i.e. when ``ancestors @ rejected == 0`` with the (T, T) ancestor mask the
attention already uses. The deepest accepted node ends the path (ties: larger Σ log p, then
the first), its row of the ancestor mask is the path. Sampling draws by inverse CDF from the
uniforms the host expands from the seed, so all implementations draw alike.

``sampling`` here covers chains (linear drafts: one child per node); a tree with siblings
under sampling goes through the numpy reference, which tries siblings in turn.
"""

from __future__ import annotations

from onnxscript import BOOL, FLOAT, INT64, script
from onnxscript import opset18 as op

# Tensor types by role: T nodes, V vocabulary entries.
NodeInts, NodeFlags, NodeFloats = INT64["T"], BOOL["T"], FLOAT["T"]
Ancestors, Scores, VocabFloats, Scalar = BOOL["T", "T"], FLOAT["T", "V"], FLOAT["V"], FLOAT[1]


@script()
def _accepted_path(ok: NodeFlags, ancestors: Ancestors, score: NodeFloats):
    """(path, length, last): the deepest node whose whole root path is ok."""
    rejected = op.Cast(op.Not(ok), to=1)
    bad = op.MatMul(op.Cast(ancestors, to=1), rejected)
    accepted = op.Equal(bad, op.CastLike(0, bad))
    depth = op.Sub(op.ReduceSum(op.Cast(ancestors, to=7), [1], keepdims=0), op.CastLike(1, op.Cast(ok, to=7)))
    deepest = op.ReduceMax(op.Where(accepted, depth, op.CastLike(-1, depth)), keepdims=0)
    candidate = op.And(accepted, op.Equal(depth, deepest))
    last = op.ArgMax(op.Where(candidate, score, op.CastLike(-3.0e38, score)), axis=0, keepdims=1)
    row = op.Gather(ancestors, last, axis=0)
    path = op.Reshape(op.NonZero(op.Reshape(row, [-1])), [-1])
    length = op.Add(op.Gather(depth, last), op.CastLike(1, depth))
    return path, length, last


@script()
def _draw(probs: VocabFloats, u: Scalar):
    cdf = op.CumSum(probs, op.Constant(value_int=0))
    total = op.ReduceMax(cdf, keepdims=1)
    count = op.ReduceSum(op.Cast(op.LessOrEqual(op.Div(cdf, total), u), to=7), keepdims=1)
    last = op.Sub(op.Shape(probs), op.Constant(value_ints=[1]))
    return op.Min(count, last)


@script()
def verify_greedy(tokens: NodeInts, parents: NodeInts, ancestors: Ancestors, logits: Scores):
    best = op.ArgMax(logits, axis=1, keepdims=0)
    is_root = op.Equal(parents, op.Constant(value_int=-1))
    parent = op.Max(parents, op.Constant(value_int=0))
    ok = op.Or(is_root, op.Equal(tokens, op.Gather(best, parent)))
    zeros = op.Cast(op.Mul(tokens, op.Constant(value_int=0)), to=1)
    path, length, last = _accepted_path(ok, ancestors, zeros)
    bonus = op.Gather(best, last)
    return path, length, bonus


@script()
def verify_typical(tokens: NodeInts, parents: NodeInts, ancestors: Ancestors, logits: Scores,
                   temperature: Scalar, epsilon: Scalar, delta: Scalar, uniforms: NodeFloats):
    p = op.Softmax(op.Div(logits, temperature), axis=1)
    entropy = op.Neg(op.ReduceSum(op.Mul(p, op.Log(op.Add(p, op.Constant(value_float=1e-5)))), [1], keepdims=0))
    threshold = op.Min(epsilon, op.Mul(delta, op.Exp(op.Neg(entropy))))
    is_root = op.Equal(parents, op.Constant(value_int=-1))
    parent = op.Max(parents, op.Constant(value_int=0))
    prob = op.Reshape(op.GatherElements(op.Gather(p, parent, axis=0), op.Unsqueeze(tokens, [1]), axis=1), [-1])
    ok = op.Or(is_root, op.Greater(prob, op.Gather(threshold, parent)))
    logp = op.Where(is_root, op.CastLike(0.0, prob), op.Log(op.Max(prob, op.Constant(value_float=1e-30))))
    score = op.MatMul(op.Cast(ancestors, to=1), logp)
    path, length, last = _accepted_path(ok, ancestors, score)
    row = op.Reshape(op.Gather(p, last, axis=0), [-1])
    allowed = op.Where(op.Greater(row, op.Gather(threshold, last)), row, op.CastLike(0.0, row))
    bonus = _draw(allowed, op.Slice(uniforms, [0], [1]))
    return path, length, bonus


@script()
def verify_sampling(tokens: NodeInts, parents: NodeInts, ancestors: Ancestors, logits: Scores,
                    temperature: Scalar, draft_probs: Scores, uniforms: NodeFloats):
    p = op.Softmax(op.Div(logits, temperature), axis=1)
    is_root = op.Equal(parents, op.Constant(value_int=-1))
    parent = op.Max(parents, op.Constant(value_int=0))
    index = op.Unsqueeze(tokens, [1])
    px = op.Reshape(op.GatherElements(op.Gather(p, parent, axis=0), index, axis=1), [-1])
    qx = op.Reshape(op.GatherElements(op.Gather(draft_probs, parent, axis=0), index, axis=1), [-1])
    take = op.And(op.Greater(qx, op.CastLike(0.0, qx)), op.Less(op.Mul(uniforms, qx), px))
    ok = op.Or(is_root, take)
    zeros = op.Mul(uniforms, op.CastLike(0.0, uniforms))
    path, length, last = _accepted_path(ok, ancestors, zeros)
    row = op.Reshape(op.Gather(p, last, axis=0), [-1])
    has_child = op.Greater(op.ReduceSum(op.Cast(op.Equal(parents, last), to=7), keepdims=0), op.Constant(value_int=0))
    residual = op.Max(op.Sub(row, op.Reshape(op.Gather(draft_probs, last, axis=0), [-1])), op.CastLike(0.0, row))
    mass = op.ReduceSum(residual, keepdims=0)
    use_residual = op.And(has_child, op.Greater(mass, op.CastLike(0.0, mass)))
    bonus = _draw(op.Where(use_residual, residual, row), op.Slice(uniforms, [0], [1]))
    return path, length, bonus


GRAPHS = {"greedy": verify_greedy, "typical": verify_typical, "sampling": verify_sampling}


def write_verify_graphs(directory) -> dict[str, str]:
    """Write verify_<mode>.onnx for every mode into ``directory``; returns mode -> file name."""
    import onnx
    from pathlib import Path

    files = {}
    for mode, fn in GRAPHS.items():
        model = fn.to_model_proto()
        model = onnx.shape_inference.infer_shapes(model, check_type=True)
        onnx.checker.check_model(model, full_check=True)
        name = f"verify_{mode}.onnx"
        onnx.save(model, str(Path(directory) / name))
        files[mode] = name
    return files
