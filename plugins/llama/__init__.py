"""Built-in decoder plugin ``llama``: Llama-family Hugging Face checkpoints (model_type llama,
qwen2, mistral) exported to one ONNX decoder graph with KV cache.

Registered through the ``edgert`` entry-point group like any third-party plugin. Module level
stays free of torch: ``export`` imports the PyTorch side.
"""

from __future__ import annotations

from typing import Any

from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.options import Option, non_negative_int, resolve_options


class LlamaFamily:
    """Decoder-only transformers of the Llama lineage, from a local checkpoint directory:
    model_type llama, qwen2, mistral, qwen3, smollm3, granite, phi3 (Phi-3, Phi-4-mini),
    gemma3_text and gemma3 (its text part).

    The PyTorch modules (edgert.exporters.llm.llama, and one small subclass per newer family in
    edgert.exporters.llm.families) are written here, not taken from transformers, and tested
    equal to it: pre-norm blocks, RoPE (default, linear, llama3, longrope; partial rotary),
    grouped-query attention with sliding-window layers masked, gated MLPs (SwiGLU, GeGLU), tied
    or untied LM heads, and each family's own differences (see its module docstring).
    """

    name = "llama"
    description = ("decoder-only LLMs from HF checkpoints, with KV cache: model_type llama, qwen2, mistral, qwen3, "
                   "smollm3, granite, phi3, gemma3_text, gemma3")
    # each model_type's paper: a bundle records its own (``paper`` lists them all)
    papers = {"llama": "Touvron et al., LLaMA, 2023 / Grattafiori et al., The Llama 3 Herd of Models, 2024",
              "qwen2": "Yang et al., Qwen2 Technical Report, 2024", "mistral": "Jiang et al., Mistral 7B, 2023",
              "qwen3": "Yang et al., Qwen3 Technical Report, 2025", "smollm3": "Hugging Face, SmolLM3, 2025",
              "granite": "IBM, Granite 3.0, 2024", "phi3": "Abdin et al., Phi-3 Technical Report, 2024",
              "gemma3_text": "Gemma Team, Gemma 3 Technical Report, 2025",
              "gemma3": "Gemma Team, Gemma 3 Technical Report, 2025"}
    paper = "; ".join(dict.fromkeys(papers.values()))

    base_options = {"context": Option(0, "positions the bundle serves, prompt + generated (0: the model's maximum)",
                                      non_negative_int),
                    "proposals": Option("fp32", "weights of the heads' graphs: fp32, or int8 (dynamic int8 MatMuls, 4x "
                                                "less to read per step on a CPU; they only propose tokens, the target "
                                                "verifies them, so greedy output stays exact)", choices=("fp32", "int8")),
                    "kv_cache": Option("in_place", "the ONNX flavour's KV cache: in_place (ONNX Runtime's "
                                                   "GroupQueryAttention writes into one fixed buffer, bound once: no "
                                                   "per-token copy or re-binding) or concat (ONNX Attention returns "
                                                   "past and new, for ONNX Runtime's CUDA / TensorRT providers at fp32)",
                                       choices=("in_place", "concat")),
                    "step_rows": Option("auto", "rows a one-token decoding step runs as: 2 (the token and a masked "
                                                "copy) gives the same numbers as a verify pass, so speculation is "
                                                "exactly ar; 1 is the single-row kernel; auto: 2 where weights are "
                                                "int8/int4 with int8 activations, 1 at fp32/fp16 and as stored at "
                                                "fp32 compute (docs/precision.md)", choices=("auto", "1", "2"))}

    @property
    def options(self) -> dict[str, Option]:
        """The family's own options, and ``<head>=FILE`` for every registered speculative head."""
        from edgert.runtime.host import get_host

        heads = {r.name: Option("", r.obj.file_help) for r in sorted(get_host().registry["head"].values(),
                                                                     key=lambda r: r.name)}
        base = self.base_options
        return {"context": base["context"], **heads, "proposals": base["proposals"], "kv_cache": base["kv_cache"],
                "step_rows": base["step_rows"]}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        return resolve_options(self.name, self.options, given)

    def export(self, registered, out, request):
        from edgert.exporters.llm.export import export_decoder

        return export_decoder(registered, out, request)


@hookimpl
def edgert_register_decoders():
    return [LlamaFamily()]
