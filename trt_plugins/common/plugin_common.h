// What the three TensorRT plugins share: the IPluginV3 plumbing (core / build / runtime
// capabilities, cloning per execution context), reading creator fields, logging through the
// logger TensorRT hands to setLoggerFinder, and the dtype mapping to the kernel library.
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <optional>
#include <string>
#include <vector>

#include "edgert_kernels.h"

namespace edgert {

constexpr char const* kPluginNamespace = "edgert";
constexpr char const* kPluginVersion = "1";

void log(nvinfer1::ILogger::Severity severity, std::string const& message);
// Empty when the TensorRT loaded in this process is the major the library was built for (or none
// is loaded); otherwise the one line, printed once to stderr, that says both versions.
std::string const& tensorrt_mismatch();
inline void log_error(std::string const& message) { log(nvinfer1::ILogger::Severity::kERROR, message); }

// Creator fields, checked against the creator's declared list: the ONNX parser passes INT(S) as
// kINT32, FLOAT(S) as kFLOAT32, STRING as kCHAR (its length may count the NUL), and only the
// declared names. A read with no fallback is a required field. The first problem (an unknown
// name, a field twice, the wrong type or count, a missing required field) is kept, and failed()
// logs it once, naming the plugin, the node and the field: the creator then returns null.
class Fields {
 public:
  Fields(std::string where, nvinfer1::PluginFieldCollection const* fc, nvinfer1::PluginFieldCollection const& declared);
  int32_t get_int(char const* name, std::optional<int32_t> fallback = std::nullopt);
  float get_float(char const* name, std::optional<float> fallback = std::nullopt);
  std::string get_string(char const* name, std::optional<std::string> fallback = std::nullopt);
  bool failed() const;
  std::string const& where() const { return where_; }

 private:
  nvinfer1::PluginField const* find(char const* name, nvinfer1::PluginFieldType type, bool required, bool one_value);
  void fail(std::string message);
  std::string where_;
  nvinfer1::PluginFieldCollection const* fc_;
  std::string error_;
};

// The fields a plugin serializes into the engine (they come back through createPlugin at kRUNTIME).
class SerializedFields {
 public:
  void add_int(char const* name, int32_t value);
  void add_float(char const* name, float value);
  void add_string(char const* name, std::string const& value);
  nvinfer1::PluginFieldCollection const* collection();

 private:
  std::vector<int32_t> ints_;
  std::vector<float> floats_;
  std::vector<std::string> strings_;
  std::vector<nvinfer1::PluginField> fields_;
  std::vector<std::pair<char const*, int>> order_;  // (name, kind 0 int / 1 float / 2 string)
  nvinfer1::PluginFieldCollection collection_{};
};

bool to_edgert_dtype(nvinfer1::DataType type, edgert_dtype* out);
bool linear(nvinfer1::PluginTensorDesc const& desc);

// IPluginV3 with the OneCore / OneBuildV2 / OneRuntime capabilities; subclasses give the op.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuildV2,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit PluginBase(char const* name) : name_(name) {}
  ~PluginBase() override = default;

  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return name_; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
                        int32_t) noexcept override {
    return 0;
  }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

 private:
  char const* name_;
};

// IPluginCreatorV3One with a fixed list of field names; subclasses build the plugin.
class CreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields);
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
  // "EdgertAttention 'node name': ", the start of every error about one createPlugin call.
  Fields fields(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc) const;
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return name_; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  char const* name_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

// One instance of each creator, defined next to each plugin.
nvinfer1::IPluginCreatorInterface* attention_creator();
nvinfer1::IPluginCreatorInterface* tree_verify_creator();
nvinfer1::IPluginCreatorInterface* kv_compact_creator();

}  // namespace edgert
