"""LLM decoding on exported decoder bundles: tokenizer, KV cache, decoder session, sampling,
and the Generator that strategies (``ar``, and the speculative ones) drive. numpy,
onnxruntime and tokenizers only: no torch."""
