// Shared by the ops' launch.cpp files: error reporting, kernel arguments, and finding,
// loading and launching the cubin of a variant for the current device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "edgert_kernels.h"

namespace edgert {

// Records the message for edgert_last_error() and returns the status.
edgert_status fail(edgert_status status, const std::string& message);

// Kernel parameters in the order of the Triton signature (constexprs removed). Values are
// copied, so temporaries may be added; the launcher appends Triton's two scratch pointers.
class KernelArgs {
 public:
  KernelArgs() { values_.reserve(48); }
  KernelArgs& ptr(const void* p) { return add(&p, sizeof p); }
  KernelArgs& i32(int64_t v) { int32_t x = static_cast<int32_t>(v); return add(&x, sizeof x); }
  KernelArgs& f32(float v) { return add(&v, sizeof v); }
  int size() const { return static_cast<int>(values_.size()); }
  std::vector<void*> pointers();

 private:
  KernelArgs& add(const void* p, size_t n);
  std::vector<uint64_t> values_;  // one 8-byte slot per parameter
};

// Launches `variant` (a name of trt_plugins/aot.py's table) with a grid on the stream.
edgert_status launch(const std::string& variant, dim3 grid, KernelArgs& args, cudaStream_t stream);

// Checks shared by the launchers.
bool aligned16(const void* p);
inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
const char* dtype_name(edgert_dtype dtype);

}  // namespace edgert
