// C launcher of the fused attention kernels (kernel.py): append the new K/V at each row's past
// length, attention with 128-row tiles (prefill) or 16-row tiles with split-KV over the
// capacity and a log-sum-exp merge (decode and tree verification), in one stream.
#include <limits>
#include <string>

#include "../common/launcher.h"

using namespace edgert;

namespace {

constexpr int kDecodeRows = 64;  // up to this many new tokens use the decode (split-KV) tiles
constexpr int kBlockN = 64;
constexpr int kMaxSplits = 32;

// Split-KV: about one split per 512 cache positions, at most 32. A function of the shapes
// only, so a TensorRT plugin can size its workspace at build time.
int num_splits(int capacity) {
  int64_t splits = cdiv(capacity, 512);
  return static_cast<int>(splits < 1 ? 1 : splits > kMaxSplits ? kMaxSplits : splits);
}

int per_split(int capacity, int splits) { return static_cast<int>(round_up(cdiv(capacity, splits), kBlockN)); }

// How a call is tiled and where its partials live: the one place that decides it, for the
// workspace query and the launch alike.
struct Plan {
  bool decode = false;    // 16-row tiles with split-KV and a merge; else 128-row tiles, no split
  int splits = 1, chunk = 0;  // KV ranges per row tile, positions per range
  size_t parts = 0, lse = 0, total = 0;  // workspace bytes
};

Plan plan(int batch, int q_heads, int new_tokens, int capacity, int head_dim) {
  Plan p;
  p.decode = new_tokens <= kDecodeRows;
  p.chunk = capacity;
  if (p.decode) {
    p.chunk = per_split(capacity, num_splits(capacity));
    p.splits = static_cast<int>(cdiv(capacity, p.chunk));
    int64_t rows = int64_t(batch) * q_heads * p.splits * new_tokens;
    p.parts = round_up(rows * head_dim * sizeof(float), 256);
    p.lse = round_up(rows * sizeof(float), 256);
  }
  p.total = p.parts + p.lse;
  return p;
}

edgert_status check_shapes(int batch, int q_heads, int kv_heads, int new_tokens, int capacity, int head_dim) {
  if (batch < 1 || q_heads < 1 || kv_heads < 1 || new_tokens < 1 || capacity < new_tokens)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention: batch " + std::to_string(batch) + ", heads " +
                                             std::to_string(q_heads) + "/" + std::to_string(kv_heads) + ", " +
                                             std::to_string(new_tokens) + " new tokens, capacity " +
                                             std::to_string(capacity) + ": all must be >= 1 and capacity >= new tokens");
  if (q_heads % kv_heads)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention: " + std::to_string(q_heads) + " query heads do not group over " +
                                             std::to_string(kv_heads) + " kv heads");
  if (head_dim != 64 && head_dim != 128)
    return fail(EDGERT_UNSUPPORTED, "edgert_attention: head_dim " + std::to_string(head_dim) + "; built for 64 and 128");
  if (int64_t(batch) * kv_heads * capacity * head_dim > std::numeric_limits<int32_t>::max() ||
      int64_t(batch) * q_heads * new_tokens * head_dim * kMaxSplits > std::numeric_limits<int32_t>::max())
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention: tensors over 2^31 elements (32-bit offsets)");
  return EDGERT_OK;
}

}  // namespace

extern "C" edgert_status edgert_attention_workspace_size(int batch, int q_heads, int new_tokens, int capacity,
                                                         int head_dim, size_t* bytes) {
  if (!bytes) return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention_workspace_size: bytes is NULL");
  edgert_status status = check_shapes(batch, q_heads, 1, new_tokens, capacity, head_dim);
  if (status != EDGERT_OK) return status;
  *bytes = plan(batch, q_heads, new_tokens, capacity, head_dim).total;
  return EDGERT_OK;
}

extern "C" edgert_status edgert_attention(edgert_stream stream, edgert_dtype dtype, const void* q, const void* k_new,
                                          const void* v_new, void* k_cache, void* v_cache,
                                          const int32_t* past_lengths, const int32_t* tree_mask, void* out, int batch,
                                          int q_heads, int kv_heads, int new_tokens, int capacity, int head_dim,
                                          float scale, void* workspace, size_t workspace_bytes) {
  edgert_status status = check_shapes(batch, q_heads, kv_heads, new_tokens, capacity, head_dim);
  if (status != EDGERT_OK) return status;
  if (dtype != EDGERT_FLOAT16 && dtype != EDGERT_BFLOAT16)
    return fail(EDGERT_UNSUPPORTED, std::string("edgert_attention: dtype ") + dtype_name(dtype) + "; built for fp16 and bf16");
  if (!q || !k_cache || !v_cache || !past_lengths || !out || (!k_new != !v_new))
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention: q, caches, past_lengths and out are required; k_new and "
                                         "v_new come together");
  for (const void* p : {q, k_new, v_new, static_cast<const void*>(k_cache), static_cast<const void*>(v_cache),
                        static_cast<const void*>(past_lengths), static_cast<const void*>(tree_mask),
                        static_cast<const void*>(out), static_cast<const void*>(workspace)})
    if (!aligned16(p)) return fail(EDGERT_INVALID_ARGUMENT, "edgert_attention: device pointers must be 16-byte aligned");
  const Plan w = plan(batch, q_heads, new_tokens, capacity, head_dim);
  if (workspace_bytes < w.total || (w.total && !workspace))
    return fail(EDGERT_WORKSPACE_TOO_SMALL, "edgert_attention: workspace of " + std::to_string(workspace_bytes) +
                                                " bytes, needs " + std::to_string(w.total));
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const std::string d = ".d" + std::to_string(head_dim);
  const int64_t D = head_dim, T = new_tokens, C = capacity;

  if (k_new) {  // the new tokens' K/V into the caches at each row's past length, moved as 16-bit words
    for (auto [src, cache] : {std::make_pair(k_new, static_cast<const void*>(k_cache)),
                              std::make_pair(v_new, static_cast<const void*>(v_cache))}) {
      KernelArgs a;
      a.ptr(src).ptr(cache).ptr(past_lengths).i32(kv_heads * T * D).i32(T * D).i32(D);
      a.i32(kv_heads * C * D).i32(C * D).i32(D).i32(T).i32(kv_heads).i32(C);
      status = launch("attention_append.b16" + d, dim3(cdiv(T, 16), batch * kv_heads), a, s);
      if (status != EDGERT_OK) return status;
    }
  }

  const bool decode = w.decode;
  const int splits = w.splits, chunk = w.chunk;
  char* ws = static_cast<char*>(workspace);
  float* parts = decode ? reinterpret_cast<float*>(ws) : nullptr;
  float* lse = decode ? reinterpret_cast<float*>(ws + w.parts) : nullptr;
  const void* fwd_out = decode ? static_cast<const void*>(parts) : out;
  const int64_t S = splits;
  const std::string variant = std::string("attention_fwd.") + dtype_name(dtype) + d +
                              (tree_mask ? ".tree" : ".causal") + (decode ? ".decode" : ".prefill");
  KernelArgs a;
  a.ptr(q).ptr(k_cache).ptr(v_cache).ptr(fwd_out).ptr(decode ? static_cast<const void*>(lse) : out)
      .ptr(tree_mask ? static_cast<const void*>(tree_mask) : past_lengths).ptr(past_lengths);
  a.i32(q_heads * T * D).i32(T * D).i32(D);                                           // q
  a.i32(kv_heads * C * D).i32(C * D).i32(D).i32(kv_heads * C * D).i32(C * D).i32(D);  // k, v caches
  if (decode) a.i32(q_heads * S * T * D).i32(S * T * D).i32(T * D).i32(D);            // parts [B, Hq, S, T, D]
  else a.i32(q_heads * T * D).i32(T * D).i32(0).i32(D);                                // out [B, Hq, T, D]
  a.i32(cdiv(T, 32));                                                                  // mask row
  a.i32(q_heads * S * T).i32(S * T).i32(T);                                            // lse [B, Hq, S, T]
  a.f32(scale).i32(T).i32(C).i32(q_heads).i32(q_heads / kv_heads).i32(chunk);
  status = launch(variant, dim3(cdiv(T, decode ? 16 : 128), batch * q_heads, splits), a, s);
  if (status != EDGERT_OK || !decode) return status;

  KernelArgs m;
  m.ptr(parts).ptr(lse).ptr(out);
  m.i32(q_heads * S * T * D).i32(S * T * D).i32(T * D).i32(D);
  m.i32(q_heads * S * T).i32(S * T).i32(T);
  m.i32(q_heads * T * D).i32(T * D).i32(D);
  m.i32(T).i32(q_heads).i32(splits);
  return launch(std::string("attention_merge.") + dtype_name(dtype) + d, dim3(cdiv(T, 16), batch * q_heads), m, s);
}
