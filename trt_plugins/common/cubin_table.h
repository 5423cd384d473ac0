// The table trt_plugins/aot.py generates: one entry per (kernel variant, architecture).
#pragma once

namespace edgert {

struct CubinEntry {
  const char* variant;          // e.g. "attention_fwd.fp16.d128.tree.decode"
  int arch;                     // compute capability, e.g. 87, 90, 110
  const unsigned char* begin;   // the cubin, embedded in the library
  const unsigned char* end;
  const char* function;         // Triton's kernel name inside the cubin
  int num_warps;
  int shared;                   // dynamic shared memory in bytes
  int num_params;               // kernel parameters without Triton's two scratch pointers
};

extern const CubinEntry kCubins[];
extern const int kNumCubins;

}  // namespace edgert
