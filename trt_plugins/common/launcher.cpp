// Finds the cubin of a kernel variant for the current device, loads it once through the CUDA
// runtime's library API (cudaLibraryLoadData: no libcuda to link against at build time) and
// launches it. Triton kernels take their parameters then two scratch pointers (null: the
// build refuses variants that need scratch), and run num_warps * 32 threads per block.
#include "launcher.h"

#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "cubin_table.h"

namespace edgert {
namespace {

thread_local std::string last_error;
std::mutex registry_mutex;
std::map<int, cudaKernel_t> kernels;               // cubin index -> loaded kernel
std::map<std::pair<int, int>, bool> shared_ready;  // (cubin index, device) -> attribute set

std::string built_archs() {
  std::ostringstream out;
  int archs[16];
  int n = edgert_kernels_architectures(archs, 16);
  for (int i = 0; i < n && i < 16; ++i) out << (i ? ", sm_" : "sm_") << archs[i];
  return out.str();
}

// A cubin for sm_XY runs on sm_XZ with Z >= Y, except the arch-specific sm_90a and later ones
// Triton emits for 90+, which run only on their own architecture.
int pick(const std::string& variant, int device_arch) {
  int best = -1;
  for (int i = 0; i < kNumCubins; ++i) {
    const CubinEntry& e = kCubins[i];
    if (variant != e.variant) continue;
    if (e.arch == device_arch) return i;
    bool compatible = e.arch < 90 && e.arch / 10 == device_arch / 10 && e.arch <= device_arch;
    if (compatible && (best < 0 || e.arch > kCubins[best].arch)) best = i;
  }
  return best;
}

bool variant_exists(const std::string& variant) {
  for (int i = 0; i < kNumCubins; ++i)
    if (variant == kCubins[i].variant) return true;
  return false;
}

}  // namespace

edgert_status fail(edgert_status status, const std::string& message) {
  last_error = message;
  return status;
}

KernelArgs& KernelArgs::add(const void* p, size_t n) {
  uint64_t slot = 0;
  std::memcpy(&slot, p, n);
  values_.push_back(slot);
  return *this;
}

std::vector<void*> KernelArgs::pointers() {
  std::vector<void*> out;
  for (auto& v : values_) out.push_back(&v);
  return out;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

const char* dtype_name(edgert_dtype dtype) {
  switch (dtype) {
    case EDGERT_FLOAT32: return "fp32";
    case EDGERT_FLOAT16: return "fp16";
    case EDGERT_BFLOAT16: return "bf16";
  }
  return "unknown";
}

edgert_status launch(const std::string& variant, dim3 grid, KernelArgs& args, cudaStream_t stream) {
  if (!variant_exists(variant))
    return fail(EDGERT_UNSUPPORTED, "edgert: no kernel variant " + variant + " was built");
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess)
    return fail(EDGERT_CUDA_ERROR, std::string("edgert: no usable CUDA device: ") + cudaGetErrorString(err));
  int arch = major * 10 + minor;
  int index = pick(variant, arch);
  if (index < 0)
    return fail(EDGERT_NO_CUBIN_FOR_DEVICE, "edgert: " + variant + " has no cubin for this device's sm_" +
                                                std::to_string(arch) + " (built for " + built_archs() +
                                                "); rebuild with -DEDGERT_CUDA_ARCHITECTURES=" + std::to_string(arch));
  const CubinEntry& e = kCubins[index];
  if (args.size() != e.num_params)
    return fail(EDGERT_INVALID_ARGUMENT, "edgert: " + variant + " takes " + std::to_string(e.num_params) +
                                             " parameters, the launcher gave " + std::to_string(args.size()));
  cudaKernel_t kernel = nullptr;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto found = kernels.find(index);
    if (found == kernels.end()) {
      cudaLibrary_t library = nullptr;
      err = cudaLibraryLoadData(&library, e.begin, nullptr, nullptr, 0, nullptr, nullptr, 0);
      if (err == cudaSuccess) err = cudaLibraryGetKernel(&kernel, library, e.function);
      if (err != cudaSuccess)
        return fail(EDGERT_CUDA_ERROR, "edgert: loading " + variant + " for sm_" + std::to_string(e.arch) + ": " +
                                           cudaGetErrorString(err));
      kernels[index] = kernel;  // kept for the life of the process, like the driver's own modules
    } else {
      kernel = found->second;
    }
    auto key = std::make_pair(index, device);
    if (!shared_ready[key]) {
      if (e.shared > 48 * 1024) {  // above the default limit: opt in for this device
        err = cudaKernelSetAttributeForDevice(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, e.shared, device);
        if (err != cudaSuccess)
          return fail(EDGERT_CUDA_ERROR, "edgert: " + variant + " needs " + std::to_string(e.shared) +
                                             " bytes of shared memory: " + cudaGetErrorString(err));
      }
      shared_ready[key] = true;
    }
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return EDGERT_OK;  // nothing to do
  std::vector<void*> params = args.pointers();
  void* scratch[2] = {nullptr, nullptr};  // Triton's global and profile scratch pointers
  params.push_back(&scratch[0]);
  params.push_back(&scratch[1]);
  err = cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(e.num_warps * 32), params.data(),
                         static_cast<size_t>(e.shared), stream);
  if (err != cudaSuccess)
    return fail(EDGERT_CUDA_ERROR, "edgert: launching " + variant + ": " + cudaGetErrorString(err));
  return EDGERT_OK;
}

}  // namespace edgert

extern "C" {

const char* edgert_last_error(void) { return edgert::last_error.c_str(); }

const char* edgert_kernels_version(void) { return "1"; }

int edgert_kernels_architectures(int* archs, int capacity) {
  std::vector<int> seen;
  for (int i = 0; i < edgert::kNumCubins; ++i) {
    bool known = false;
    for (int a : seen) known = known || a == edgert::kCubins[i].arch;
    if (!known) seen.push_back(edgert::kCubins[i].arch);
  }
  for (size_t i = 0; i < seen.size() && static_cast<int>(i) < capacity; ++i) archs[i] = seen[i];
  return static_cast<int>(seen.size());
}

int edgert_kernels_cubin_count(void) { return edgert::kNumCubins; }

}  // extern "C"
