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

nvinfer1::PluginField const* Fields::find(char const* name, nvinfer1::PluginFieldType type) const {
  if (!fc_) return nullptr;
  for (int32_t i = 0; i < fc_->nbFields; ++i) {
    nvinfer1::PluginField const& f = fc_->fields[i];
    if (f.name && std::strcmp(f.name, name) == 0 && f.type == type && f.data && f.length > 0) return &f;
  }
  return nullptr;
}

int32_t Fields::get_int(char const* name, int32_t fallback) const {
  auto f = find(name, nvinfer1::PluginFieldType::kINT32);
  return f ? *static_cast<int32_t const*>(f->data) : fallback;
}

float Fields::get_float(char const* name, float fallback) const {
  auto f = find(name, nvinfer1::PluginFieldType::kFLOAT32);
  return f ? *static_cast<float const*>(f->data) : fallback;
}

std::string Fields::get_string(char const* name, std::string const& fallback) const {
  auto f = find(name, nvinfer1::PluginFieldType::kCHAR);
  if (!f) return fallback;
  std::string value(static_cast<char const*>(f->data), static_cast<size_t>(f->length));
  return value.substr(0, value.find('\0'));  // the length may or may not count a terminator
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

CreatorBase::CreatorBase(char const* name, std::vector<nvinfer1::PluginField> fields)
    : name_(name), fields_(std::move(fields)) {
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
}

}  // namespace edgert

extern "C" {

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(edgert::logger_mutex);
  edgert::logger_finder = finder;
}

nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {
      edgert::attention_creator(), edgert::tree_verify_creator(), edgert::kv_compact_creator()};
  nbCreators = 3;
  return creators;
}

}  // extern "C"
