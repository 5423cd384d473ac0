// Which TensorRT major this process runs. ILogger and ILoggerFinder change their vtables between
// majors (11 adds the IVersionedInterface base), and so may every other interface: a library built
// for one major and handed the other's objects calls the wrong slots. So before anything is handed
// out, the libnvinfer loaded in the process is asked for its major (getInferLibMajorVersion, looked
// up with dlsym: the library links no libnvinfer symbol), and a mismatch refuses everything.
#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "plugin_common.h"

namespace edgert {
namespace {

// libnvinfer.so.N and the lean / dispatch runtimes; never libnvinfer_plugin or the builder resources.
bool is_runtime_library(char const* path) {
  char const* slash = std::strrchr(path, '/');
  std::string name = slash ? slash + 1 : path;
  for (char const* prefix : {"libnvinfer.so", "libnvinfer_lean.so", "libnvinfer_dispatch.so"})
    if (name.rfind(prefix, 0) == 0) return true;
  return false;
}

int collect(dl_phdr_info* info, size_t, void* data) {
  if (info->dlpi_name && is_runtime_library(info->dlpi_name))
    static_cast<std::vector<std::string>*>(data)->emplace_back(info->dlpi_name);
  return 0;
}

int major_of(void* handle) {
  using Version = int32_t (*)();
  if (auto major = reinterpret_cast<Version>(dlsym(handle, "getInferLibMajorVersion"))) return major();
  if (auto version = reinterpret_cast<Version>(dlsym(handle, "getInferLibVersion"))) {
    int32_t v = version();  // (major * 100 + minor) * 100 + patch since 10; major * 1000 + ... before
    return v >= 100000 ? v / 10000 : v / 1000;
  }
  return -1;
}

std::string find_mismatch() {
  std::vector<std::string> loaded;
  dl_iterate_phdr(collect, &loaded);  // names first: dlopen is not called under the loader's lock
  for (std::string const& path : loaded) {
    void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) continue;
    int major = major_of(handle);
    dlclose(handle);
    if (major >= 0 && major != NV_TENSORRT_MAJOR)
      return "edgert: libedgert_trt_plugins.so was built for TensorRT " EDGERT_TENSORRT_VERSION
             " but this process runs TensorRT " + std::to_string(major) + " (" + path +
             "): no plugins registered; rebuild it with -DTENSORRT_ROOT=<TensorRT " + std::to_string(major) + ">";
  }
  return "";
}

}  // namespace

std::string const& tensorrt_mismatch() {
  static std::once_flag once;
  static std::string message;
  std::call_once(once, [] {
    message = find_mismatch();
    if (!message.empty()) std::fprintf(stderr, "%s\n", message.c_str());  // not the logger: its layout is the other major's
  });
  return message;
}

}  // namespace edgert
