// C launcher of the tree verification kernels (kernel.py): per-node statistics, then one
// program per batch row walks the tree. Scratch (argmax, log-sum-exp, threshold, and the walk's
// accepted / depth / score) lives in the caller's workspace; the path is -1 padded.
#include <string>

#include "../common/launcher.h"

using namespace edgert;

namespace {
constexpr int kScratchArrays = 6;  // best, lse, threshold, accepted, depth, score: 4 bytes per node each
size_t scratch_bytes(int batch, int nodes) { return round_up(size_t(batch) * nodes * 4, 256); }
}  // namespace

extern "C" edgert_status edgert_tree_verify_workspace_size(int batch, int nodes, size_t* bytes) {
  if (!bytes || batch < 1 || nodes < 1)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_tree_verify_workspace_size: batch and nodes must be >= 1");
  *bytes = kScratchArrays * scratch_bytes(batch, nodes);
  return EDGERT_OK;
}

extern "C" edgert_status edgert_tree_verify(edgert_stream stream, edgert_dtype logits_dtype, const int32_t* tokens,
                                            const int32_t* parents, const void* logits, const float* uniform,
                                            int32_t* path, int32_t* length, int32_t* bonus, int batch, int nodes,
                                            int vocab, int typical, float temperature, float epsilon, float delta,
                                            void* workspace, size_t workspace_bytes) {
  if (batch < 1 || nodes < 1 || vocab < 1)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_tree_verify: batch, nodes and vocab must be >= 1");
  if (int64_t(batch) * nodes * vocab > INT32_MAX)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_tree_verify: logits over 2^31 elements (32-bit offsets)");
  if (!tokens || !parents || !logits || !path || !length || !bonus || (typical && !uniform))
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_tree_verify: tokens, parents, logits, path, length, bonus (and uniform "
                                         "for typical acceptance) are required");
  if (typical && !(temperature > 0.f))
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_tree_verify: typical acceptance needs a temperature > 0, got " +
                                             std::to_string(temperature));
  size_t need = 0;
  edgert_tree_verify_workspace_size(batch, nodes, &need);
  if (!workspace || workspace_bytes < need || !aligned16(workspace))
    return fail(EDGERT_WORKSPACE_TOO_SMALL, "edgert_tree_verify: workspace of " + std::to_string(workspace_bytes) +
                                                " bytes (16-byte aligned), needs " + std::to_string(need));
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  char* ws = static_cast<char*>(workspace);
  size_t step = scratch_bytes(batch, nodes);
  void *best = ws, *lse = ws + step, *threshold = ws + 2 * step, *accepted = ws + 3 * step, *depth = ws + 4 * step,
       *score = ws + 5 * step;
  cudaError_t err = cudaMemsetAsync(path, 0xff, size_t(batch) * nodes * sizeof(int32_t), s);  // -1 padding
  if (err != cudaSuccess) return fail(EDGERT_CUDA_ERROR, std::string("edgert_tree_verify: ") + cudaGetErrorString(err));

  const std::string suffix = std::string(".") + dtype_name(logits_dtype) + (typical ? ".typical" : ".greedy");
  const float inv_t = typical ? 1.f / temperature : 1.f;
  const int64_t s_lb = int64_t(nodes) * vocab, s_lt = vocab;
  KernelArgs stats;
  stats.ptr(logits).ptr(best).ptr(lse).ptr(threshold).i32(s_lb).i32(s_lt).i32(vocab).i32(nodes)
      .f32(inv_t).f32(epsilon).f32(delta);
  edgert_status status = launch("tree_verify_stats" + suffix, dim3(nodes, batch), stats, s);
  if (status != EDGERT_OK) return status;
  KernelArgs walk;
  walk.ptr(tokens).ptr(parents).ptr(logits).ptr(best).ptr(lse).ptr(threshold).ptr(accepted).ptr(depth).ptr(score)
      .ptr(path).ptr(length).ptr(bonus).ptr(typical ? static_cast<const void*>(uniform) : lse)
      .i32(s_lb).i32(s_lt).i32(vocab).i32(nodes).f32(inv_t);
  return launch("tree_verify_accept" + suffix, dim3(batch), walk, s);
}
