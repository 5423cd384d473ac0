/* edgert kernel library: the Triton kernels of trt_plugins/, AOT-compiled to cubins and
 * launched through the CUDA runtime on a stream with raw device pointers. No Python, no
 * Triton at run time. Every call returns an edgert_status; on failure edgert_last_error()
 * says what was wrong in one line (thread-local, valid until the thread's next call).
 *
 * Layouts (row-major, contiguous): q and out [batch, q_heads, new_tokens, head_dim];
 * k_new / v_new [batch, kv_heads, new_tokens, head_dim]; caches [batch, kv_heads, capacity,
 * head_dim]; past_lengths int32 [batch] on the device; tree_mask int32 [new_tokens,
 * ceil(new_tokens / 32)] (bit j of row i set when new token i sees new token j; the past is
 * always visible), or NULL for causal; logits [batch, nodes, vocab]; tokens / parents / path
 * int32 [batch, nodes] (parents[0] = -1, nodes in topological order, path -1 padded).
 */
#ifndef EDGERT_KERNELS_H
#define EDGERT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st* edgert_stream; /* a cudaStream_t; NULL is the legacy default stream */

typedef enum edgert_status {
  EDGERT_OK = 0,
  EDGERT_INVALID_ARGUMENT = 1,    /* a shape, pointer or value the kernels cannot take */
  EDGERT_UNSUPPORTED = 2,         /* no variant was built for it (dtype, head_dim) */
  EDGERT_NO_CUBIN_FOR_DEVICE = 3, /* the library was built for other architectures */
  EDGERT_CUDA_ERROR = 4,          /* the CUDA runtime failed (no device, launch error, ...) */
  EDGERT_WORKSPACE_TOO_SMALL = 5
} edgert_status;

typedef enum edgert_dtype { EDGERT_FLOAT32 = 0, EDGERT_FLOAT16 = 1, EDGERT_BFLOAT16 = 2 } edgert_dtype;

const char* edgert_last_error(void);
const char* edgert_kernels_version(void);
/* The compute capabilities (e.g. 87, 90, 110) the library holds cubins for; returns how many,
 * writing at most `capacity` of them. */
int edgert_kernels_architectures(int* archs, int capacity);
/* How many (variant, architecture) cubins the library embeds. */
int edgert_kernels_cubin_count(void);

/* Fused attention: appends k_new / v_new to the caches at past_lengths (skipped when k_new is
 * NULL: the caches already hold them), then attends (fp32 online softmax) over past ‖ new.
 * fp16 / bf16, head_dim 64 or 128, grouped-query heads. Many queries use 128-row tiles; up
 * to 64 use 16-row tiles with split-KV over the capacity and a log-sum-exp merge. */
edgert_status edgert_attention_workspace_size(int batch, int q_heads, int new_tokens, int capacity, int head_dim,
                                              size_t* bytes);
edgert_status edgert_attention(edgert_stream stream, edgert_dtype dtype, const void* q, const void* k_new,
                               const void* v_new, void* k_cache, void* v_cache, const int32_t* past_lengths,
                               const int32_t* tree_mask, void* out, int batch, int q_heads, int kv_heads,
                               int new_tokens, int capacity, int head_dim, float scale, void* workspace,
                               size_t workspace_bytes);

/* Tree verification (runtime/llm/verify.py's contract): greedy (typical = 0) or Medusa's
 * typical acceptance (typical = 1, with temperature, epsilon, delta and one uniform in [0, 1)
 * per batch row for the bonus token). Writes path, length [batch] and bonus [batch]. */
edgert_status edgert_tree_verify_workspace_size(int batch, int nodes, size_t* bytes);
edgert_status edgert_tree_verify(edgert_stream stream, edgert_dtype logits_dtype, const int32_t* tokens,
                                 const int32_t* parents, const void* logits, const float* uniform, int32_t* path,
                                 int32_t* length, int32_t* bonus, int batch, int nodes, int vocab, int typical,
                                 float temperature, float epsilon, float delta, void* workspace,
                                 size_t workspace_bytes);

/* In-place KV compaction after a verify: row b's accepted nodes path[b, :length[b]] move from
 * cache positions past_lengths[b] + node to past_lengths[b] + j. element_bytes 2 or 4;
 * path_stride is the path's row stride (>= the longest path). */
edgert_status edgert_kv_compact(edgert_stream stream, int element_bytes, void* cache, const int32_t* path,
                                const int32_t* length, const int32_t* past_lengths, int batch, int heads,
                                int capacity, int head_dim, int path_stride);

#ifdef __cplusplus
}
#endif
#endif /* EDGERT_KERNELS_H */
