"""`make demo`, LLM half: a Hugging Face checkpoint to a decoder bundle to streamed text, on the CPU.

1. Train a tiny Llama (transformers' LlamaForCausalLM: 2 layers, grouped-query attention) for
   a few seconds on a handful of sentences, with a byte-level BPE tokenizer trained by
   ``tokenizers``, and save both as a Hugging Face checkpoint directory — nothing can be
   downloaded here, and a model that has learnt its sentences shows that the text is right.
2. `edgert export llama --checkpoint DIR`: one ONNX decoder graph with KV cache, parity checked.
3. `edgert generate` greedy and streamed, then sampled; speeds on stderr.
4. `edgert train medusa` (heads on the model's own continuations, seconds), export with the
   heads, and `edgert generate --strategy medusa --stats`: same text, fewer decoder passes.
5. A real model: SmolLM2-135M-Instruct (Apache-2.0) from its GGUF file, exported as stored (the
   file's own 4-bit blocks), answers a question through its chat template. Then the same file
   at int8 rewrites a given paragraph with ``lookup`` speculation: the same text as plain
   decoding, fewer passes. (As stored, a verify pass of several rows costs two steps on ONNX
   Runtime's fp32-compute 4-bit kernel, so lookup measures that and barely drafts there.)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path("build/demo")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small language models next to their vision models.",
    "Speculative decoding proposes several tokens cheaply and verifies them in one pass.",
    "Grüße aus Köln: the runtime streams multi-byte characters correctly.",
]


def edgert(*args: str) -> None:
    print(f"\n$ edgert {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "edgert", *args], check=True)


def train_checkpoint(directory: Path) -> None:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 10, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    config = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    batch = [tok.encode(s).ids + [1] for s in SENTENCES]
    width = max(map(len, batch))
    ids = torch.tensor([b + [1] * (width - len(b)) for b in batch])
    labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for step in range(150):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"  trained in {time.perf_counter() - t0:.0f} s, final loss {loss.item():.3f}")
    model.save_pretrained(directory)


def main() -> None:
    checkpoint, bundle = OUT / "tiny-llama-hf", OUT / "tiny-llama"
    print("training a tiny Llama on four sentences (transformers, CPU) ...", flush=True)
    train_checkpoint(checkpoint)
    edgert("export", "llama", "--checkpoint", str(checkpoint), "--out", str(bundle), "--force")
    edgert("info", str(bundle))
    edgert("generate", str(bundle), "--prompt", "The quick brown", "--stream", "--max-new-tokens", "40")
    edgert("generate", str(bundle), "--prompt", "Grüße", "--stream", "--max-new-tokens", "40")
    edgert("generate", str(bundle), "--prompt", "Edge devices", "--temperature", "0.8", "--top-p", "0.9", "--seed", "1")

    text = OUT / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    heads = OUT / "tiny-llama-medusa.safetensors"
    edgert("train", "medusa", "--checkpoint", str(checkpoint), "--data", str(text), "--out", str(heads), "--steps", "150",
           "--samples", "64", "--prompt-len", "4", "--new-tokens", "24", "--no-resume")
    edgert("export", "llama", "--checkpoint", str(checkpoint), "--opt", f"medusa={heads}", "--out", f"{bundle}-medusa", "--force")
    for strategy in ("ar", "medusa"):
        edgert("generate", f"{bundle}-medusa", "--prompt", "Speculative", "--strategy", strategy, "--stats")

    real_model()


PARAGRAPH = ("The GNU General Public License is a free, copyleft license for software and other kinds of works. "
             "The licenses for most software and other practical works are designed to take away your freedom to "
             "share and change the works. By contrast, the GNU General Public License is intended to guarantee "
             "your freedom to share and change all versions of a program.")


def real_model() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import smollm2

    print(f"\nfetching SmolLM2-135M-Instruct: {smollm2.LICENSE} ...", flush=True)
    try:
        gguf = smollm2.fetch()
    except smollm2.Unavailable as err:
        print(f"  skipped: {err}")
        return
    bundle = OUT / "smollm2"
    edgert("export", "llama", "--checkpoint", str(gguf), "--out", str(bundle), "--force")
    edgert("generate", str(bundle), "--chat", "--prompt", "What is the capital of France, and what is it known for?",
           "--stream", "--max-new-tokens", "80")
    int8 = OUT / "smollm2-int8"
    print("\nthe same file at int8 for speculation (as stored, a verify pass costs two steps on this kernel)")
    edgert("export", "llama", "--checkpoint", str(gguf), "--out", str(int8), "--precision", "int8", "--force")
    prompt = f"Rewrite this paragraph in simpler words:\n\n{PARAGRAPH}"
    runs = {}
    for strategy in ("ar", "lookup"):
        args = ["generate", str(int8), "--chat", "--prompt", prompt, "--max-new-tokens", "120", "--strategy", strategy,
                "--stats", "--json"]
        print(f"\n$ edgert {shlex.join(args)}", flush=True)
        out = subprocess.run([sys.executable, "-m", "edgert", *args], check=True, capture_output=True, text=True)
        runs[strategy] = json.loads(out.stdout)
        print(out.stderr.strip())
    print(f"\n{runs['lookup']['text']}\n")
    same = runs["ar"]["tokens"] == runs["lookup"]["tokens"]
    speedup = runs["lookup"]["decode_tokens_per_s"] / runs["ar"]["decode_tokens_per_s"]
    print(f"lookup: {'the same text as ar' if same else 'TEXT DIFFERS FROM ar'}, decode {speedup:.2f}x ar")


if __name__ == "__main__":
    main()
