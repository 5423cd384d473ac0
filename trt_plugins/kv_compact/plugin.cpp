// EdgertKVCompact (namespace "edgert", version "1"): after a verify, moves each row's accepted
// path to the cache positions right after its past, in place.
//
// Inputs   0 cache [B, H, C, D] (fp32 / fp16 / bf16)   1 path [B, T] int32   2 length [B] int32
//          3 past_lengths [B] int32
// Output   0 cache, aliased to input 0 (PreviewFeature::kALIASED_PLUGIN_IO_10_03; without it
//          the cache is copied first).
// Fields   none.
#include <memory>

#include "plugin_common.h"

using namespace nvinfer1;

namespace edgert {
namespace {

constexpr char const* kName = "EdgertKVCompact";

class KVCompactPlugin final : public PluginBase {
 public:
  KVCompactPlugin() : PluginBase(kName) {}
  IPluginV3* clone() noexcept override { return new (std::nothrow) KVCompactPlugin(); }
  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in, int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != 4) return -1;
    out[0] = in[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 4 || nbOutputs != 1) {
      log_error(std::string(kName) + ": expects cache, path, length, past_lengths; got " + std::to_string(nbInputs) +
                " inputs");
      return -1;
    }
    out[0] = in[0];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (!linear(d)) return false;
    if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    if (pos == 4) return d.type == io[0].desc.type;
    return d.type == DataType::kINT32;
  }

  int32_t getAliasedInput(int32_t output) noexcept override { return output == 0 ? 0 : -1; }

  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    int element = in[0].type == DataType::kFLOAT ? 4 : 2;
    int batch = static_cast<int>(in[0].dims.d[0]), heads = static_cast<int>(in[0].dims.d[1]);
    int capacity = static_cast<int>(in[0].dims.d[2]), dim = static_cast<int>(in[0].dims.d[3]);
    if (outputs[0] != inputs[0]) {  // not aliased: compact a copy
      size_t bytes = size_t(batch) * heads * capacity * dim * element;
      if (cudaMemcpyAsync(outputs[0], inputs[0], bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess) return -1;
    }
    edgert_status status = edgert_kv_compact(
        reinterpret_cast<edgert_stream>(stream), element, outputs[0], static_cast<int32_t const*>(inputs[1]),
        static_cast<int32_t const*>(inputs[2]), static_cast<int32_t const*>(inputs[3]), batch, heads, capacity, dim,
        static_cast<int>(in[1].dims.d[1]));
    if (status != EDGERT_OK) {
      log_error(std::string(kName) + ": " + edgert_last_error());
      return -1;
    }
    return 0;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.collection(); }

 private:
  SerializedFields fields_;
};

class KVCompactCreator final : public CreatorBase {
 public:
  KVCompactCreator() : CreatorBase(kName, {}) {}
  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    if (fields(name, fc).failed()) return nullptr;  // it takes none: any field is unknown
    return new (std::nothrow) KVCompactPlugin();
  }
};

}  // namespace

IPluginCreatorInterface* kv_compact_creator() {
  static KVCompactCreator creator;
  return &creator;
}

}  // namespace edgert
