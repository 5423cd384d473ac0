"""LLM decoders (export side): our own PyTorch modules for Hugging Face checkpoint layouts."""
