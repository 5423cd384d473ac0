"""Training speculative heads for a user's own checkpoint, the base model frozen, on the base
model's own greedy continuations (self-distillation: the draft learns what the base will say,
not what a dataset says). One loop for every head that offers ``trainee`` (see
``edgert_register_heads``); the built-in ones:

* ``medusa``: Medusa-1 heads (ResBlock + projection initialised from lm_head); head k predicts
  token t + k + 2 from the base's final hidden state at t, its loss weighted 0.8^k (Cai et al.,
  2024, §2.2.1);
* ``mtp``: a DeepSeek-V3-style MTP module (:mod:`.mtp`); position t reads h_t and the token
  t + 1 and predicts t + 2 (depth 1; deeper drafts chain it at run time).

1. Prompts are cut from the user's text files (tokenised with the checkpoint's tokenizer.json).
2. The base model continues each prompt greedily with its KV cache; the sequences are cached.
3. The draft part learns with AdamW on continuation targets only.

Long runs are resumable: a ``<out>.partial.safetensors`` (the continuations, the weights and the
optimiser's tensors; the arguments, the step and the optimiser's settings as JSON in its header,
so nothing is unpickled) is written every ``save_every`` steps and picked up by the next run with
the same arguments (one that cannot be read is named and training starts over); the result is
written atomically at the end (Medusa's layout; DeepSeek's MTP key names), for ``edgert export
llama --opt medusa=`` / ``--opt mtp=``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F

from edgert.runtime.errors import EdgertError, first_line
from edgert.runtime.progress import Bar, step

from .llama import causal_mask, load_decoder
from .medusa import MedusaHeads
from .mtp import MTPGraph, MTPModule

DECAY = 0.8


@dataclass
class Trainee:
    """What a head gives the training loop: the module trained on the frozen base, its losses
    ``(base, module, seqs, prompt_len) -> (loss, top-1 accuracy per output)``, its writer
    ``(module, path)`` (its checkpoint layout), a name for the progress bar, how many tokens
    past a position its furthest target lies (the continuations must be longer) and how many
    outputs it reports."""

    module: Any
    losses: Callable
    save: Callable
    what: str
    lookahead: int = 1
    count: int = 1


def read_corpus(files: list[str], tokenizer_path: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    ids: list[int] = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise EdgertError(f"{path}: training text file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EdgertError(f"{path}: not UTF-8 text") from None
        ids += tok.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int64)


@torch.inference_mode()
def continuations(model, corpus: np.ndarray, samples: int, prompt_len: int, new: int, rng, batch: int = 16) -> torch.Tensor:
    """(samples, prompt_len + new): prompts from the corpus, continued greedily by the model."""
    if corpus.size < prompt_len + 1:
        raise EdgertError(f"training text has {corpus.size} tokens; need at least {prompt_len + 1}")
    starts = rng.integers(0, corpus.size - prompt_len, samples)
    prompts = torch.from_numpy(np.stack([corpus[s:s + prompt_len] for s in starts]))
    out = []
    bar = Bar("self-distillation: the base model continues the prompts", samples)
    for i in range(0, samples, batch):
        ids = prompts[i:i + batch]
        b = ids.shape[0]
        positions = torch.arange(prompt_len).expand(b, -1)
        logits, _, *cache = model(ids, positions, causal_mask(b, prompt_len, 0), torch.full((b, 1), prompt_len - 1),
                                  *model.empty_cache(b))
        seq = [ids]
        for t in range(new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq.append(nxt)
            if t + 1 < new:
                pos = prompt_len + t
                logits, _, *cache = model(nxt, torch.full((b, 1), pos), causal_mask(b, 1, pos), torch.zeros(b, 1, dtype=torch.long),
                                          *cache)
        out.append(torch.cat(seq, dim=1))
        bar.update(min(i + batch, samples))
    return torch.cat(out)


def base_hidden(model, seqs: torch.Tensor) -> torch.Tensor:
    b, s = seqs.shape
    with torch.no_grad():
        every = torch.arange(s).expand(b, -1)
        return model(seqs, every, causal_mask(b, s, 0), every[:, -1:], *model.empty_cache(b))[1]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    valid = target != -100
    return loss, float((logits.argmax(-1)[valid] == target[valid]).float().mean()) if valid.any() else 0.0


def head_losses(model, heads: MedusaHeads, seqs: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, list[float]]:
    """Weighted loss over heads and each head's top-1 accuracy, on continuation targets only."""
    b, s = seqs.shape
    hidden = base_hidden(model, seqs)
    total, accuracy = 0.0, []
    for k, head in enumerate(heads):
        shift = k + 2                       # head k at position t predicts token t + k + 2
        logits = head(hidden[:, : s - shift])
        target = seqs[:, shift:].clone()
        target[:, : max(0, prompt_len - shift)] = -100  # prompt tokens are data, not the base's words
        loss, acc = _loss(logits, target)
        total = total + DECAY ** k * loss
        accuracy.append(acc)
    return total, accuracy


def mtp_losses(model, mtp: MTPModule, seqs: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, list[float]]:
    """Position t reads (h_t, token t + 1) and predicts token t + 2."""
    b, s = seqs.shape
    hidden = base_hidden(model, seqs)
    n = s - 2
    every = torch.arange(n).expand(b, -1)
    graph = MTPGraph(model, mtp)
    logits, *_ = graph(seqs[:, 1:n + 1], every, causal_mask(b, n, 0), every, hidden[:, :n],
                       *model.empty_cache(b)[:2])
    target = seqs[:, 2:].clone()
    target[:, : max(0, prompt_len - 2)] = -100
    loss, acc = _loss(logits, target)
    return loss, [acc]


def train_medusa(checkpoint: str, data: list[str], out: str, num_heads: int = 4, num_layers: int = 1, **kwargs) -> dict:
    return train("medusa", checkpoint, data, out, options={"heads": num_heads, "layers": num_layers}, **kwargs)


def train_mtp(checkpoint: str, data: list[str], out: str, **kwargs) -> dict:
    return train("mtp", checkpoint, data, out, **kwargs)


class ResumeError(Exception):
    """A resume file that cannot be used; training starts over."""


def save_resume_state(path: Path, setup: dict, step: int, heads, optimizer, seqs: torch.Tensor) -> None:
    from safetensors.torch import save_file

    opt = optimizer.state_dict()
    tensors = {f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()}
    tensors["seqs"] = seqs.contiguous()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).contiguous()
    meta = {"setup": setup, "step": step, "param_groups": opt["param_groups"]}
    save_file(tensors, str(path), metadata={"edgert_resume": json.dumps(meta)})


def load_resume_state(path: Path, setup: dict, heads, optimizer, steps: int, vocab_size: int) -> tuple[int, torch.Tensor]:
    """Weights and optimiser state from ``path`` (safetensors: tensors and JSON only, no code),
    each checked: finite, the shapes of these heads, token ids in the vocabulary, a step within
    ``steps``. The command line's hyperparameters (learning rate...) stay: only the state comes back."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["edgert_resume"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise ResumeError(f"not a resume file edgert wrote ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("setup") != setup:
        raise ResumeError("made with other arguments")
    step, groups = meta.get("step"), meta.get("param_groups")
    if not isinstance(step, int) or step < 0 or not isinstance(groups, list) or "seqs" not in tensors:
        raise ResumeError("incomplete")
    if step > steps:
        raise ResumeError(f"at step {step}, past --steps {steps}")
    seqs = tensors["seqs"]
    if seqs.dtype not in (torch.int32, torch.int64) or seqs.dim() != 2 or not seqs.numel() \
            or int(seqs.min()) < 0 or int(seqs.max()) >= vocab_size:
        raise ResumeError(f"its token sequences are not ids of this vocabulary ({vocab_size})")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ResumeError(f"holds NaN or inf ({', '.join(bad[:3])})")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, slot = key.split(".", 2)
            if not index.isdigit() or int(index) >= len(params):
                raise ResumeError(f"optimizer state {key} names no parameter of these heads")
            if slot != "step" and value.shape != params[int(index)].shape:
                raise ResumeError(f"optimizer state {key} is {list(value.shape)}, its parameter "
                                  f"{list(params[int(index)].shape)}")
            state.setdefault(int(index), {})[slot] = value
    given = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        heads.load_state_dict({k[len("heads."):]: v for k, v in tensors.items() if k.startswith("heads.")})
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ResumeError(f"does not fit these heads ({first_line(err)})") from None
    for group, settings in zip(optimizer.param_groups, given):  # the file's lr never replaces --lr
        group.update(settings)
    return step, seqs


def train(kind: str, checkpoint: str, data: list[str], out: str, options: dict[str, Any] | None = None, steps: int = 500,
          batch: int = 8, samples: int = 256, prompt_len: int = 32, new_tokens: int = 96, lr: float = 1e-3,
          seed: int = 0, save_every: int = 50, resume: bool = True) -> dict:
    """Train head ``kind`` (a registered head with ``trainee``) for ``checkpoint`` (a Hugging Face
    directory or a GGUF file); ``options``: the head's ``train_options`` (e.g. Medusa's heads and
    layers)."""
    from .gguf import checkpoint_directory, is_gguf

    args = (kind, data, out, options, steps, batch, samples, prompt_len, new_tokens, lr, seed, save_every, resume)
    if is_gguf(checkpoint):
        with checkpoint_directory(checkpoint) as (directory, _):
            return _train(directory, Path(checkpoint), *args)
    return _train(Path(checkpoint), Path(checkpoint), *args)


def _train(directory: Path, source: Path, kind: str, data: list[str], out: str, options: dict[str, Any] | None,
           steps: int, batch: int, samples: int, prompt_len: int, new_tokens: int, lr: float, seed: int,
           save_every: int, resume: bool) -> dict:
    """:func:`train` on the checkpoint directory ``directory``; ``source`` is what the user named
    (the resume file records it)."""
    from edgert.runtime.options import resolve_options
    from edgert.runtime.host import get_host

    head = get_host().get("head", kind).obj
    if not callable(getattr(head, "trainee", None)):
        raise EdgertError(f"head {kind!r} cannot be trained by edgert (it offers no trainee)")
    opts = resolve_options(f"head {kind!r}", getattr(head, "train_options", {}) or {}, options or {})
    if not directory.is_dir():
        raise EdgertError(f"{directory}: not a directory; --checkpoint takes a Hugging Face checkpoint directory or a "
                          "GGUF file")
    for name, value in (("steps", steps), ("batch", batch), ("samples", samples), ("prompt-len", prompt_len),
                        ("new-tokens", new_tokens)):
        if value < 1:
            raise EdgertError(f"--{name} must be at least 1, got {value}")
    out_path = Path(out)
    if not out_path.parent.is_dir():  # found now, not after the minutes of training
        raise EdgertError(f"--out {out_path}: the folder {out_path.parent} does not exist")
    if out_path.is_dir():
        raise EdgertError(f"--out {out_path}: a folder; --out names the .safetensors file to write")
    partial = out_path.with_name(out_path.name + ".partial.safetensors")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with step(f"loading {source}"):
        model = load_decoder(directory)
    model.requires_grad_(False)
    trainee = head.trainee(model, opts)
    if new_tokens <= trainee.lookahead:
        raise EdgertError(f"--new-tokens {new_tokens} must exceed {trainee.lookahead}: {trainee.what} learn(s) tokens "
                          f"up to {trainee.lookahead + 1} ahead")
    heads, losses, write = trainee.module, trainee.losses, trainee.save
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    setup = {"kind": kind, **opts, "samples": samples, "prompt_len": prompt_len,
             "new_tokens": new_tokens, "seed": seed, "data": [str(Path(d).resolve()) for d in data], "checkpoint": str(source.resolve())}
    start, seqs = 0, None
    if resume and partial.is_file():
        try:
            start, seqs = load_resume_state(partial, setup, heads, optimizer, steps, model.cfg.vocab_size)
        except ResumeError as err:
            print(f"  {partial}: {err}; starting over", flush=True)
        else:
            print(f"  resuming {partial} at step {start}/{steps}", flush=True)
    if seqs is None:
        corpus = read_corpus(data, directory / "tokenizer.json")
        seqs = continuations(model, corpus, samples, prompt_len, new_tokens, rng)

    def save(at: int) -> None:
        tmp = partial.with_name(partial.name + ".tmp")
        save_resume_state(tmp, setup, at, heads, optimizer, seqs)
        os.replace(tmp, partial)

    bar = Bar(f"training {trainee.what}", steps, start)
    accuracy: list[float] = []
    for it in range(start, steps):
        idx = torch.randint(0, seqs.shape[0], (batch,), generator=torch.Generator().manual_seed(seed * 100003 + it))
        loss, accuracy = losses(model, heads, seqs[idx], prompt_len)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.update(it + 1, f"loss {loss.item():.3f} top-1 " + " ".join(f"{a:.2f}" for a in accuracy))
        if (it + 1) % save_every == 0 and it + 1 < steps:
            save(it + 1)
    tmp = out_path.with_name(out_path.name + ".tmp")
    write(heads, tmp)
    os.replace(tmp, out_path)
    partial.unlink(missing_ok=True)
    return {"kind": kind, "heads": trainee.count, "steps": steps, "top1": accuracy}
