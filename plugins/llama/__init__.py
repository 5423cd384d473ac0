"""Built-in decoder plugin ``llama``: Llama-family Hugging Face checkpoints (model_type llama,
qwen2, mistral) exported to one ONNX decoder graph with KV cache.

Registered through the ``edgert`` entry-point group like any third-party plugin. Module level
stays free of torch: ``export`` imports the PyTorch side.
"""

from __future__ import annotations

from typing import Any

from edgert.runtime.detector import Option, non_negative_int, resolve_options
from edgert.runtime.hookspecs import hookimpl


class LlamaFamily:
    """Decoder-only transformers of the Llama family, from a local checkpoint directory.

    The PyTorch module (edgert.exporters.llm.llama) is written here, not taken from
    transformers: pre-norm RMSNorm blocks, RoPE (default and llama3 scaling), grouped-query
    attention, SwiGLU MLP, tied or untied LM head, Qwen2's q/k/v biases; Mistral's sliding
    window bounds the exported context instead of being masked.
    """

    name = "llama"
    description = "Llama-family LLM decoders (llama, qwen2, mistral) with KV cache, from HF checkpoints"
    paper = ("Touvron et al., LLaMA, 2023 / Grattafiori et al., The Llama 3 Herd of Models, 2024; "
             "Yang et al., Qwen2 Technical Report, 2024; Jiang et al., Mistral 7B, 2023")
    base_options = {"context": Option(0, "positions the bundle serves, prompt + generated (0: the model's maximum)",
                                      non_negative_int),
                    "proposals": Option("fp32", "weights of the heads' graphs: fp32, or int8 (dynamic int8 MatMuls, 4x "
                                                "less to read per step on a CPU; they only propose tokens, the target "
                                                "verifies them, so greedy output stays exact)", choices=("fp32", "int8"))}

    @property
    def options(self) -> dict[str, Option]:
        """The family's own options, and ``<head>=FILE`` for every registered speculative head."""
        from edgert.runtime.host import get_host

        heads = {r.name: Option("", r.obj.file_help) for r in sorted(get_host().registry["head"].values(),
                                                                     key=lambda r: r.name)}
        return {"context": self.base_options["context"], **heads, "proposals": self.base_options["proposals"]}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        return resolve_options(self.name, self.options, given)

    def export(self, registered, out, request):
        from edgert.exporters.llm.export import export_decoder

        return export_decoder(registered, out, request)


@hookimpl
def edgert_register_decoders():
    return [LlamaFamily()]
