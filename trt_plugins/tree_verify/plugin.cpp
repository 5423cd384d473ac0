// EdgertTreeVerify (namespace "edgert", version "1"): tree verification on the GPU, the
// contract of runtime/llm/verify.py (greedy, or Medusa's typical acceptance).
//
// Inputs   0 tokens [B, T] int32   1 parents [B, T] int32 (-1 at the root, topological order)
//          2 logits [B, T, V] fp32 / fp16 / bf16   3 uniform [B] fp32 (typical: draws the bonus)
// Outputs  0 path [B, T] int32 (-1 padded)   1 length [B] int32   2 bonus [B] int32
// Fields   mode ("greedy" | "typical"), temperature, epsilon, delta (Medusa: 0.09, 0.3).
#include <cmath>
#include <memory>

#include "plugin_common.h"

using namespace nvinfer1;

namespace edgert {
namespace {

constexpr char const* kName = "EdgertTreeVerify";

class TreeVerifyPlugin final : public PluginBase {
 public:
  TreeVerifyPlugin(bool typical, float temperature, float epsilon, float delta)
      : PluginBase(kName), typical_(typical), temperature_(temperature), epsilon_(epsilon), delta_(delta) {}

  IPluginV3* clone() noexcept override {
    return new (std::nothrow) TreeVerifyPlugin(typical_, temperature_, epsilon_, delta_);
  }

  int32_t getNbOutputs() const noexcept override { return 3; }

  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t nbInputs) const noexcept override {
    if (nbOutputs != 3 || nbInputs != 4) return -1;
    out[0] = out[1] = out[2] = DataType::kINT32;
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != 4 || nbOutputs != 3) {
      log_error(std::string(kName) + ": expects tokens, parents, logits, uniform; got " + std::to_string(nbInputs) +
                " inputs");
      return -1;
    }
    out[0] = in[0];  // path [B, T]
    out[1].nbDims = 1;
    out[1].d[0] = in[0].d[0];  // length [B]
    out[2] = out[1];           // bonus [B]
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (!linear(d)) return false;
    if (pos == 2) return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    if (pos == 3) return d.type == DataType::kFLOAT;
    return d.type == DataType::kINT32;
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    size_t bytes = 0;
    edgert_tree_verify_workspace_size(static_cast<int>(in[0].max.d[0]), static_cast<int>(in[0].max.d[1]), &bytes);
    return bytes;
  }

  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void* workspace, cudaStream_t stream) noexcept override {
    edgert_dtype dtype;
    if (!to_edgert_dtype(in[2].type, &dtype)) return -1;
    int batch = static_cast<int>(in[2].dims.d[0]), nodes = static_cast<int>(in[2].dims.d[1]);
    int vocab = static_cast<int>(in[2].dims.d[2]);
    size_t ws = 0;
    edgert_tree_verify_workspace_size(batch, nodes, &ws);
    edgert_status status = edgert_tree_verify(
        reinterpret_cast<edgert_stream>(stream), dtype, static_cast<int32_t const*>(inputs[0]),
        static_cast<int32_t const*>(inputs[1]), inputs[2], static_cast<float const*>(inputs[3]),
        static_cast<int32_t*>(outputs[0]), static_cast<int32_t*>(outputs[1]), static_cast<int32_t*>(outputs[2]), batch,
        nodes, vocab, typical_ ? 1 : 0, temperature_, epsilon_, delta_, workspace, ws);
    if (status != EDGERT_OK) {
      log_error(std::string(kName) + ": " + edgert_last_error());
      return -1;
    }
    return 0;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = SerializedFields();
    fields_.add_string("mode", typical_ ? "typical" : "greedy");
    fields_.add_float("temperature", temperature_);
    fields_.add_float("epsilon", epsilon_);
    fields_.add_float("delta", delta_);
    return fields_.collection();
  }

 private:
  bool typical_;
  float temperature_, epsilon_, delta_;
  SerializedFields fields_;
};

class TreeVerifyCreator final : public CreatorBase {
 public:
  TreeVerifyCreator()
      : CreatorBase(kName, {PluginField("mode", nullptr, PluginFieldType::kCHAR, 0),
                            PluginField("temperature", nullptr, PluginFieldType::kFLOAT32, 1),
                            PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1),
                            PluginField("delta", nullptr, PluginFieldType::kFLOAT32, 1)}) {}

  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    Fields f = fields(name, fc);
    std::string mode = f.get_string("mode", "greedy");
    float temperature = f.get_float("temperature", 1.f), epsilon = f.get_float("epsilon", 0.09f);
    float delta = f.get_float("delta", 0.3f);
    if (f.failed()) return nullptr;
    if (mode != "greedy" && mode != "typical") {
      log_error(f.where() + "mode '" + mode + "', expected 'greedy' or 'typical' (speculative sampling runs in the "
                            "ONNX verify graph)");
      return nullptr;
    }
    if (!(temperature > 0.f) || !std::isfinite(temperature)) {
      log_error(f.where() + "temperature " + std::to_string(temperature) + " must be a finite number > 0");
      return nullptr;
    }
    if (!(epsilon >= 0.f && delta >= 0.f) || !std::isfinite(epsilon) || !std::isfinite(delta)) {
      log_error(f.where() + "epsilon " + std::to_string(epsilon) + " and delta " + std::to_string(delta) +
                " must be finite numbers >= 0");
      return nullptr;
    }
    return new (std::nothrow) TreeVerifyPlugin(mode == "typical", temperature, epsilon, delta);
  }
};

}  // namespace

IPluginCreatorInterface* tree_verify_creator() {
  static TreeVerifyCreator creator;
  return &creator;
}

}  // namespace edgert
