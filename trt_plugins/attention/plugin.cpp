// EdgertAttention (namespace "edgert", version "1"): the decoder's fused attention over an
// in-place KV cache, as a TensorRT IPluginV3.
//
// Inputs   0 q [B, Hq, T, D]      1 k [B, Hkv, T, D]      2 v [B, Hkv, T, D]   (fp16 or bf16)
//          3 k_cache [B, Hkv, C, D]   4 v_cache [B, Hkv, C, D]                   (same dtype)
//          5 past_lengths [B] int32   6 tree_mask [T, ceil(T/32)] int32 (mask_type "tree" only)
// Outputs  0 out [B, Hq, T, D]   1 k_cache   2 v_cache, aliased to inputs 3 and 4
//          (IPluginV3OneBuildV2::getAliasedInput; the builder must enable
//          PreviewFeature::kALIASED_PLUGIN_IO_10_03, without it the cache is copied first).
// Fields   num_q_heads, num_kv_heads, head_dim (int), scale (float, default 1/sqrt(head_dim)),
//          mask_type ("causal" | "tree").
#include <cmath>
#include <memory>

#include "plugin_common.h"

using namespace nvinfer1;

namespace edgert {
namespace {

constexpr char const* kName = "EdgertAttention";

class AttentionPlugin final : public PluginBase {
 public:
  AttentionPlugin(int q_heads, int kv_heads, int head_dim, float scale, bool tree)
      : PluginBase(kName), q_heads_(q_heads), kv_heads_(kv_heads), head_dim_(head_dim), scale_(scale), tree_(tree) {}

  IPluginV3* clone() noexcept override {
    return new (std::nothrow) AttentionPlugin(q_heads_, kv_heads_, head_dim_, scale_, tree_);
  }

  int32_t getNbOutputs() const noexcept override { return 3; }

  int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const* in, int32_t nbInputs) const noexcept override {
    if (nbOutputs != 3 || nbInputs != expected_inputs()) return -1;
    out[0] = in[0];
    out[1] = in[3];
    out[2] = in[4];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* in, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* out,
                          int32_t nbOutputs, IExprBuilder&) noexcept override {
    if (nbInputs != expected_inputs() || nbOutputs != 3) {
      log_error(std::string(kName) + ": expects " + std::to_string(expected_inputs()) + " inputs (mask_type " +
                (tree_ ? "tree" : "causal") + "), got " + std::to_string(nbInputs));
      return -1;
    }
    out[0] = in[0];
    out[1] = in[3];
    out[2] = in[4];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t) noexcept override {
    PluginTensorDesc const& d = io[pos].desc;
    if (!linear(d)) return false;
    if (pos == 0) return d.type == DataType::kHALF || d.type == DataType::kBF16;
    if (pos == 5 || (tree_ && pos == 6)) return d.type == DataType::kINT32;  // past_lengths, tree_mask
    (void)nbInputs;
    return d.type == io[0].desc.type;  // k, v, caches and every output share q's dtype
  }

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    // The largest need over the profile: split-KV partials peak at 64 new tokens and grow with capacity.
    int64_t tokens = in[0].max.d[2] < 64 ? in[0].max.d[2] : 64;
    return workspace_for(static_cast<int>(in[0].max.d[0]), static_cast<int>(tokens), static_cast<int>(in[3].max.d[2]));
  }

  int32_t getAliasedInput(int32_t output) noexcept override { return output == 1 ? 3 : output == 2 ? 4 : -1; }

  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    edgert_dtype dtype;
    if (!to_edgert_dtype(in[0].type, &dtype)) return -1;
    int batch = static_cast<int>(in[0].dims.d[0]), tokens = static_cast<int>(in[0].dims.d[2]);
    int capacity = static_cast<int>(in[3].dims.d[2]);
    if (in[0].dims.d[1] != q_heads_ || in[1].dims.d[1] != kv_heads_ || in[0].dims.d[3] != head_dim_) {
      log_error(std::string(kName) + ": q / k shapes disagree with num_q_heads " + std::to_string(q_heads_) +
                ", num_kv_heads " + std::to_string(kv_heads_) + ", head_dim " + std::to_string(head_dim_));
      return -1;
    }
    for (int i = 0; i < 2; ++i) {  // not aliased (preview feature off): start from a copy of the cache
      if (outputs[1 + i] != inputs[3 + i]) {
        size_t bytes = size_t(batch) * kv_heads_ * capacity * head_dim_ * 2;
        if (cudaMemcpyAsync(outputs[1 + i], inputs[3 + i], bytes, cudaMemcpyDeviceToDevice, stream) != cudaSuccess)
          return -1;
      }
    }
    size_t ws = workspace_for(batch, tokens, capacity);
    edgert_status status = edgert_attention(
        reinterpret_cast<edgert_stream>(stream), dtype, inputs[0], inputs[1], inputs[2], outputs[1], outputs[2],
        static_cast<int32_t const*>(inputs[5]), tree_ ? static_cast<int32_t const*>(inputs[6]) : nullptr, outputs[0],
        batch, q_heads_, kv_heads_, tokens, capacity, head_dim_, scale_, workspace, ws);
    if (status != EDGERT_OK) {
      log_error(std::string(kName) + ": " + edgert_last_error());
      return -1;
    }
    return 0;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    fields_ = SerializedFields();
    fields_.add_int("num_q_heads", q_heads_);
    fields_.add_int("num_kv_heads", kv_heads_);
    fields_.add_int("head_dim", head_dim_);
    fields_.add_float("scale", scale_);
    fields_.add_string("mask_type", tree_ ? "tree" : "causal");
    return fields_.collection();
  }

 private:
  int32_t expected_inputs() const { return tree_ ? 7 : 6; }
  size_t workspace_for(int batch, int tokens, int capacity) const {  // 0 for shapes the library refuses
    size_t bytes = 0;
    if (edgert_attention_workspace_size(batch, q_heads_, tokens, capacity, head_dim_, &bytes) != EDGERT_OK) return 0;
    return bytes;
  }

  int q_heads_, kv_heads_, head_dim_;
  float scale_;
  bool tree_;
  SerializedFields fields_;
};

class AttentionCreator final : public CreatorBase {
 public:
  AttentionCreator()
      : CreatorBase(kName, {PluginField("num_q_heads", nullptr, PluginFieldType::kINT32, 1),
                            PluginField("num_kv_heads", nullptr, PluginFieldType::kINT32, 1),
                            PluginField("head_dim", nullptr, PluginFieldType::kINT32, 1),
                            PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1),
                            PluginField("mask_type", nullptr, PluginFieldType::kCHAR, 0)}) {}

  IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    Fields f = fields(name, fc);
    int q_heads = f.get_int("num_q_heads"), kv_heads = f.get_int("num_kv_heads"), dim = f.get_int("head_dim");
    std::string mask = f.get_string("mask_type", "causal");
    float scale = f.get_float("scale", dim > 0 ? 1.f / std::sqrt(static_cast<float>(dim)) : 1.f);
    if (f.failed()) return nullptr;
    if (q_heads < 1 || kv_heads < 1 || q_heads % kv_heads) {
      log_error(f.where() + "num_q_heads " + std::to_string(q_heads) + " and num_kv_heads " + std::to_string(kv_heads) +
                " must be >= 1 and group");
      return nullptr;
    }
    if (dim != 64 && dim != 128) {
      log_error(f.where() + "head_dim " + std::to_string(dim) + "; the kernels are built for 64 and 128");
      return nullptr;
    }
    if (mask != "causal" && mask != "tree") {
      log_error(f.where() + "mask_type '" + mask + "', expected 'causal' or 'tree'");
      return nullptr;
    }
    if (!(scale > 0.f) || !std::isfinite(scale)) {
      log_error(f.where() + "scale " + std::to_string(scale) + " must be a finite number > 0");
      return nullptr;
    }
    return new (std::nothrow) AttentionPlugin(q_heads, kv_heads, dim, scale, mask == "tree");
  }
};

}  // namespace

IPluginCreatorInterface* attention_creator() {
  static AttentionCreator creator;
  return &creator;
}

}  // namespace edgert
