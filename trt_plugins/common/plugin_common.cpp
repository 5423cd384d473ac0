// Shared plugin plumbing, and the two symbols TensorRT looks up when it loads the library
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins): getCreators and setLoggerFinder.
#include "plugin_common.h"

#include <cstring>
#include <iostream>
#include <mutex>

namespace edgert {
namespace {
std::mutex logger_mutex;
nvinfer1::ILoggerFinder* logger_finder = nullptr;
}  // namespace

void log(nvinfer1::ILogger::Severity severity, std::string const& message) {
  std::lock_guard<std::mutex> lock(logger_mutex);
  nvinfer1::ILogger* logger = logger_finder ? logger_finder->findLogger() : nullptr;
  if (logger) logger->log(severity, message.c_str());
  else if (severity <= nvinfer1::ILogger::Severity::kWARNING) std::cerr << message << std::endl;
}

namespace {
char const* type_name(nvinfer1::PluginFieldType type) {
  switch (type) {
    case nvinfer1::PluginFieldType::kINT32: return "kINT32 (an ONNX INT)";
    case nvinfer1::PluginFieldType::kFLOAT32: return "kFLOAT32 (an ONNX FLOAT)";
    case nvinfer1::PluginFieldType::kCHAR: return "kCHAR (an ONNX STRING)";
    case nvinfer1::PluginFieldType::kFLOAT16: return "kFLOAT16";
    case nvinfer1::PluginFieldType::kFLOAT64: return "kFLOAT64";
    case nvinfer1::PluginFieldType::kINT8: return "kINT8";
    case nvinfer1::PluginFieldType::kINT16: return "kINT16";
    case nvinfer1::PluginFieldType::kINT64: return "kINT64";
    case nvinfer1::PluginFieldType::kDIMS: return "kDIMS";
    default: return "another type";
  }
}
// The names in fc: each declared, none twice ("" when they are).
std::string check_names(nvinfer1::PluginFieldCollection const* fc, nvinfer1::PluginFieldCollection const& declared) {
  if (!fc) return "";
  if (fc->nbFields < 0 || (fc->nbFields > 0 && !fc->fields)) return "a malformed field collection";
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    char const* name = fc->fields[i].name;
    if (!name) return "field " + std::to_string(i) + " has no name";
    bool known = false;
    for (int32_t j = 0; j < declared.nbFields; ++j) known = known || std::strcmp(declared.fields[j].name, name) == 0;
    if (!known) return std::string("unknown field '") + name + "'";
    for (int32_t j = 0; j < i; ++j)
      if (fc->fields[j].name && std::strcmp(fc->fields[j].name, name) == 0) return std::string("field '") + name + "' given twice";
  }
  return "";
}
}  // namespace

Fields::Fields(std::string where, nvinfer1::PluginFieldCollection const* fc, nvinfer1::PluginFieldCollection const& declared)
    : where_(std::move(where)), fc_(fc) {
  fail(check_names(fc, declared));
}

void Fields::fail(std::string message) {
  if (error_.empty()) error_ = std::move(message);  // the first problem is the one reported
}

bool Fields::failed() const {
  if (!error_.empty()) log_error(where_ + error_);
  return !error_.empty();
}

nvinfer1::PluginField const* Fields::find(char const* name, nvinfer1::PluginFieldType type, bool required, bool one_value) {
  if (!error_.empty()) return nullptr;
  for (int32_t i = 0; fc_ && i < fc_->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc_->fields[i];
    if (!f.name || std::strcmp(f.name, name) != 0) continue;
    if (f.type != type) {
      fail(std::string("field '") + name + "' is " + type_name(f.type) + ", expected " + type_name(type));
      return nullptr;
    }
    if (!f.data || f.length < 1 || (one_value && f.length != 1)) {
      fail(std::string("field '") + name + "' has " + std::to_string(f.length) + " values, expected 1");
      return nullptr;
    }
    return &f;
  }
  if (required) fail(std::string("missing field '") + name + "' (" + type_name(type) + ")");
  return nullptr;
}

int32_t Fields::get_int(char const* name, std::optional<int32_t> fallback) {
  auto f = find(name, nvinfer1::PluginFieldType::kINT32, !fallback, true);
  return f ? *static_cast<int32_t const*>(f->data) : fallback.value_or(0);
}

float Fields::get_float(char const* name, std::optional<float> fallback) {
  auto f = find(name, nvinfer1::PluginFieldType::kFLOAT32, !fallback, true);
  return f ? *static_cast<float const*>(f->data) : fallback.value_or(0.f);
}

std::string Fields::get_string(char const* name, std::optional<std::string> fallback) {
  auto f = find(name, nvinfer1::PluginFieldType::kCHAR, !fallback, false);
  if (!f) return fallback.value_or("");
  std::string value(static_cast<char const*>(f->data), static_cast<size_t>(f->length));
  return value.substr(0, value.find('\0'));  // the length may or may not count the terminator
}

void SerializedFields::add_int(char const* name, int32_t value) { ints_.push_back(value); order_.emplace_back(name, 0); }
void SerializedFields::add_float(char const* name, float value) { floats_.push_back(value); order_.emplace_back(name, 1); }
void SerializedFields::add_string(char const* name, std::string const& value) {
  strings_.push_back(value);
  order_.emplace_back(name, 2);
}

nvinfer1::PluginFieldCollection const* SerializedFields::collection() {
  fields_.clear();  // built once the vectors stop growing, so the data pointers stay valid
  size_t i = 0, f = 0, s = 0;
  for (auto const& [name, kind] : order_) {
    if (kind == 0) fields_.emplace_back(name, &ints_[i++], nvinfer1::PluginFieldType::kINT32, 1);
    else if (kind == 1) fields_.emplace_back(name, &floats_[f++], nvinfer1::PluginFieldType::kFLOAT32, 1);
    else {
      std::string const& v = strings_[s++];
      fields_.emplace_back(name, v.c_str(), nvinfer1::PluginFieldType::kCHAR, static_cast<int32_t>(v.size() + 1));
    }
  }
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

bool to_edgert_dtype(nvinfer1::DataType type, edgert_dtype* out) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT: *out = EDGERT_FLOAT32; return true;
    case nvinfer1::DataType::kHALF: *out = EDGERT_FLOAT16; return true;
    case nvinfer1::DataType::kBF16: *out = EDGERT_BFLOAT16; return true;
    default: return false;
  }
}

bool linear(nvinfer1::PluginTensorDesc const& desc) { return desc.format == nvinfer1::TensorFormat::kLINEAR; }

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuildV2*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

Fields CreatorBase::fields(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc) const {
  return Fields(std::string(name_) + " '" + (name ? name : "") + "': ", fc, collection_);
}

CreatorBase::CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields)
    : name_(name), fields_(std::move(fields)) {
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
}

}  // namespace edgert

// The only two exported symbols (the library is built with -fvisibility=hidden). Both refuse
// when the process runs another TensorRT major than the headers the library was built with.
extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  if (!edgert::tensorrt_mismatch().empty()) return;  // its vtable is the other major's: never call it
  std::lock_guard<std::mutex> lock(edgert::logger_mutex);
  edgert::logger_finder = finder;
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  if (!edgert::tensorrt_mismatch().empty()) {
    nbCreators = 0;
    return nullptr;
  }
  static nvinfer1::IPluginCreatorInterface* const creators[] = {
      edgert::attention_creator(), edgert::tree_verify_creator(), edgert::kv_compact_creator()};
  nbCreators = 3;
  return creators;
}

}  // extern "C"
