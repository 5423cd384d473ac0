// A stand-in libnvinfer for the plugins' host test: the two version entry points only, reporting
// the major it is compiled with (-DSTANDIN_MAJOR=N, soname libnvinfer.so.N). Loaded into the test
// process, it plays the TensorRT the plugin library finds at load time.
#include <cstdint>

#ifndef STANDIN_MAJOR
#error "compile with -DSTANDIN_MAJOR=<TensorRT major>"
#endif

extern "C" __attribute__((visibility("default"))) int32_t getInferLibMajorVersion() noexcept { return STANDIN_MAJOR; }
extern "C" __attribute__((visibility("default"))) int32_t getInferLibVersion() noexcept {
  return (STANDIN_MAJOR * 100 + 0) * 100 + 0;
}
