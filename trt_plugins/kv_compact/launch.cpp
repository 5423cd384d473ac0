// C launcher of the in-place KV compaction kernel (kernel.py); elements move as 16- or 32-bit
// words, one program per (batch row, head).
#include <string>

#include "../common/launcher.h"

using namespace edgert;

extern "C" edgert_status edgert_kv_compact(edgert_stream stream, int element_bytes, void* cache, const int32_t* path,
                                           const int32_t* length, const int32_t* past_lengths, int batch, int heads,
                                           int capacity, int head_dim, int path_stride) {
  if (element_bytes != 2 && element_bytes != 4)
    return fail(EDGERT_UNSUPPORTED, "edgert_kv_compact: element size " + std::to_string(element_bytes) +
                                        " bytes; built for 2 (fp16, bf16) and 4 (fp32)");
  if (head_dim != 64 && head_dim != 128)
    return fail(EDGERT_UNSUPPORTED, "edgert_kv_compact: head_dim " + std::to_string(head_dim) + "; built for 64 and 128");
  if (batch < 1 || heads < 1 || capacity < 1 || path_stride < 1 || !cache || !path || !length || !past_lengths)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_kv_compact: cache, path, length, past_lengths are required and "
                                         "batch, heads, capacity, path_stride must be >= 1");
  if (int64_t(batch) * heads * capacity * head_dim > INT32_MAX)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert_kv_compact: cache over 2^31 elements (32-bit offsets)");
  if (!aligned16(cache)) return fail(EDGERT_INVALID_ARGUMENT, "edgert_kv_compact: the cache must be 16-byte aligned");
  const int64_t D = head_dim, C = capacity;
  KernelArgs a;
  a.ptr(cache).ptr(path).ptr(length).ptr(past_lengths).i32(heads * C * D).i32(C * D).i32(D).i32(path_stride)
      .i32(heads).i32(C);
  return launch("kv_compact.b" + std::to_string(element_bytes * 8) + ".d" + std::to_string(head_dim),
                dim3(batch * heads, 1), a, reinterpret_cast<cudaStream_t>(stream));
}
