"""Text generation on a decoder bundle::

    from edgert.runtime.llm.generator import Generator, SamplingParams
    gen = Generator("qwen-bundle")                       # verifies the bundle, opens the graph
    result = gen.generate("Once upon a time", SamplingParams(max_new_tokens=64))
    stream = gen.stream("Hello", SamplingParams(temperature=0.7, seed=1))
    for piece in stream:
        print(piece, end="", flush=True)
    print(stream.result.stats.decode_tokens_per_s)      # the GenerationResult, once exhausted

The Generator owns what every decoding strategy shares: prompt encoding (and chat
templates), the KV cache, stop conditions (eos ids, stop strings, max new tokens, the
bundle's context), streaming text and timing. A strategy (plugin, ``--strategy``) only
proposes tokens: it is a generator that yields lists of accepted tokens, reading the model
through :class:`Decoding`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..bundle import Bundle
from ..options import resolve_options
from ..errors import BundleError, InputError
from ..host import get_host
from .contract import heads_of
from .sampling import Sampler, SamplingParams
from .session import DecoderSession, Outputs
from .tokenizer import IncrementalDetokenizer, TextTokenizer
from .tree import Tree
from .verify import OnnxVerifier, Verdict, verify


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0          # start of generate -> first new token
    decode_s: float = 0.0        # first new token -> last new token
    forward_calls: int = 0       # decoder passes after the prefill
    accepted: list[int] = field(default_factory=list)  # tokens gained per decoder pass after the prefill

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens gained per decoder pass (1.0 for plain decoding)."""
        return float(np.mean(self.accepted)) if self.accepted else 1.0

    def acceptance_by_depth(self) -> list[float]:
        """Fraction of decoder passes whose accepted path reached draft depth 1, 2, ..."""
        if not self.accepted:
            return []
        lengths = np.asarray(self.accepted)
        return [float((lengths > d).mean()) for d in range(1, int(lengths.max()))]

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    stop_reason: str  # "eos" | "stop_string" | "max_new_tokens" | "context"
    stats: GenerationStats


def open_same_vocabulary(path: str | os.PathLike, target: DecoderSession) -> DecoderSession:
    """``path``'s decoder session, after checking that it speaks ``target``'s vocabulary; held to
    the signature policy the target was opened under."""
    bundle = Bundle.load(path, verify="used", trusted_keys=target.bundle.trusted_keys)
    info = bundle.manifest.get("decoder")
    if bundle.kind != "decoder" or not info:
        raise BundleError(f"{path}: the draft must be a decoder bundle, this is a {bundle.kind} bundle")
    mine, theirs = bundle.manifest["files"].get(info["tokenizer"]), target.manifest["files"].get(target.info["tokenizer"])
    if info["vocab_size"] != target.vocab_size or mine != theirs:
        raise BundleError(f"{path}: the draft's tokenizer differs from the target's (vocab {info['vocab_size']} vs "
                          f"{target.vocab_size}, tokenizer.json {'same' if mine == theirs else 'different'}); "
                          "a draft must share the target's tokenizer")
    return DecoderSession(bundle, device=target.device, threads=target.threads, backend=target.backend_name)


class Decoding:
    """What a strategy sees: the model, the cache, the sampler and the tokens so far (the
    strategy's whole surface; ``edgert_register_strategies`` in hookspecs.py is its manual).

    ``tokens`` is the prompt plus every token accepted so far (the Generator appends what a
    strategy yields before resuming it). ``cache.length`` is how many of them are cached.
    ``options`` are the strategy's resolved options; ``resource(key, make)`` keeps objects that
    outlive one generation (a head's or a draft model's session) in the Generator.
    ``session`` is the target's :class:`DecoderSession` (its bundle, info, device, threads).
    """

    def __init__(self, session: DecoderSession, prompt: list[int], sampler: Sampler, capacity: int,
                 stats: GenerationStats, options: dict | None = None, resources: dict | None = None,
                 verifier: Callable | None = None):
        self.session = session
        self.sampler = sampler
        self.tokens = list(prompt)
        self.cache = session.new_cache(capacity)
        self.stats = stats
        self.options = options or {}
        self._resources = {} if resources is None else resources
        self.verifier = verifier or verify
        self.hidden: np.ndarray | None = None  # hidden states of the tokens the last pass accepted (draft heads)
        self.extra: dict[str, np.ndarray] = {}  # the decoder's extra outputs (taps) of those tokens, by name

    @property
    def context(self) -> int:
        """Positions the bundle serves, prompt and generated tokens together."""
        return self.session.context

    @property
    def vocab_size(self) -> int:
        return self.session.vocab_size

    def head(self, name: str):
        """The bundle's speculative head ``name``, opened on the target's backend (once per
        Generator); one line when the bundle was exported without it."""
        session = self.session
        head = get_host().get("head", name).obj
        entry = heads_of(session.info).get(name)
        if entry is None:
            what = getattr(head, "what", None) or f"the {name!r} head"
            raise InputError(f"{session.bundle.root}: this strategy needs a bundle exported with {what} (edgert export "
                             f"{session.manifest['plugin']['name']} --opt {name}=FILE); this one has none")
        return self.resource(("head", name, str(session.bundle.root)), lambda: head.open(session, entry))

    def open_bundle(self, path: str) -> DecoderSession:
        """Another decoder bundle's session (a draft model), checked to speak the target's
        vocabulary, on the target's backend; kept between generations."""
        s = self.session
        return self.resource(("bundle", str(Path(path).resolve())), lambda: open_same_vocabulary(path, s))

    def verify_chain(self, root: int, draft: list[int], draft_probs: np.ndarray | None = None):
        """``root = yield from d.verify_chain(root, draft)``: verify ``root`` followed by a linear
        ``draft`` in one pass (see :meth:`verify`), emit the accepted tokens, return the bonus;
        an empty draft is a plain step."""
        if not draft:
            return (yield from self.plain_step(root))
        tokens = [root, *draft]
        verdict = self.verify(Tree.chain(len(tokens)), tokens, draft_probs=draft_probs)
        yield [tokens[i] for i in verdict.path]
        return verdict.bonus

    def plain_step(self, token: int):
        """``root = yield from d.plain_step(root)``: emit ``token``, run it, return the next
        token. What a strategy does where its proposal no longer fits the context."""
        yield [token]
        return self.sample(self.step(token))

    def resource(self, key, make: Callable):
        if key not in self._resources:
            self._resources[key] = make()
        return self._resources[key]

    @property
    def room(self) -> int:
        """How many more positions the bundle's context holds after the cache."""
        return self.session.context - self.cache.length

    def forward(self, tokens, mask: np.ndarray | None = None, positions=None, logits_at=None) -> Outputs:
        """Run ``tokens`` after the cache (see :meth:`DecoderSession.extend`).

        A bundle with a ``rope_switch`` (Phi-3's LongRoPE) rotates a whole call with its long
        factors once the call's last position passes the switch. The first call that crosses it
        runs the cached tokens again with its own, so that the cache is rotated as if the whole
        sequence had come at once: what transformers' Phi-3 generation does (it drops the cache
        there), and what keeps a step and a verify pass over the same tokens equal."""
        switch, past = self.session.info.get("rope_switch"), self.cache.length
        if switch is not None and 0 < past <= switch:
            last = past + len(tokens) if positions is None else int(np.max(positions)) + 1
            if last > switch:
                return self._again_from_the_start(tokens, mask, positions, logits_at)
        return self.session.extend(self.cache, tokens, mask, positions, logits_at)

    def _again_from_the_start(self, tokens, mask, positions, logits_at) -> Outputs:
        past, new = self.cache.length, len(tokens)
        self.cache.truncate(0)
        if mask is not None:  # the cached tokens causal among themselves, all of them seen by the new ones
            mask = np.block([[np.tri(past, dtype=bool), np.zeros((past, new), bool)],
                             [np.ones((new, past), bool), np.asarray(mask, bool)]])
        if positions is not None:
            positions = np.concatenate([np.arange(past), np.asarray(positions, np.int64)])
        at = [past + i for i in ([new - 1] if logits_at is None else logits_at)]
        out = self.session.extend(self.cache, [*self.tokens[:past], *tokens], mask, positions, at)
        return Outputs(out.logits, out.hidden[past:], {k: v[past:] for k, v in out.extra.items()})

    def prefill(self) -> np.ndarray:
        """Run the prompt; the logits (vocab,) for the first new token."""
        t0 = time.perf_counter()
        out = self.forward(self.tokens)
        self.hidden, self.extra = out.hidden, out.extra
        self.stats.prefill_s = time.perf_counter() - t0
        return out.logits[-1]

    def step(self, token: int) -> np.ndarray:
        """One token through the cache; the logits (vocab,) for the next."""
        self.stats.forward_calls += 1
        self.stats.accepted.append(1)
        out = self.forward([token])
        self.hidden, self.extra = out.hidden, out.extra
        return out.logits[-1]

    def sample(self, logits: np.ndarray) -> int:
        return self.sampler(logits, self.tokens)

    def verify(self, tree: Tree, tokens, mode: str | None = None, draft_probs: np.ndarray | None = None) -> Verdict:
        """Run a speculation tree (node 0: the next token, already chosen) in one pass, accept a
        path by the verification op, keep only that path in the cache. ``mode`` defaults to
        greedy for greedy decoding and to speculative sampling otherwise (lossless both ways).

        The pass runs the nodes depth first (:meth:`Tree.depth_first`), so that the tree's first
        chain (each node's first, best-ranked child) sees its keys as a causal prefix, as steps
        do. A row with a masked-out sibling among its keys sums attention in another order, by
        1e-7 in fp32, which a bundle whose activations are int8 (``step_rows`` 2) turns into
        another token. There, a path accepted off the first chain runs again as a causal chain,
        which is exact, and the op decides again with those rows; the op reads only the rows of
        the nodes it walks through (greedy and sampling), so this ends once the path it picks
        is the chain just run (docs/precision.md, "What lossless means")."""
        mode = mode or ("greedy" if self.sampler.params.greedy else "sampling")
        tokens = np.asarray(tokens, np.int64)
        start = self.cache.length
        ran, row = tree.depth_first()
        reordered = ran is not tree  # a chain, or a tree already depth first, runs as it is
        self.stats.forward_calls += 1
        out = self.forward(tokens[np.argsort(row)] if reordered else tokens, mask=ran.ancestor_mask(),
                           positions=start + ran.depths(), logits_at=range(tree.size))
        logits = out.logits[row] if reordered else out.logits
        seed = int(self.sampler.rng.integers(2**63))
        verdict = self._judge(tree, tokens, logits, mode, draft_probs, seed)
        if self.session.step_rows == 2 and mode != "typical":  # node -> its row in `out`, where that row is exact
            exact = {n: int(row[n]) for n in range(tree.size) if row[n] == tree.depths()[n]}
            while not all(n in exact for n in verdict.path):
                path = verdict.path
                self.cache.truncate(start)
                self.stats.forward_calls += 1
                out = self.forward(tokens[path], logits_at=range(len(path)))
                logits[path] = out.logits
                exact = {n: i for i, n in enumerate(path)}
                verdict = self._judge(tree, tokens, logits, mode, draft_probs, seed)
            rows = np.asarray([exact[n] for n in verdict.path])
        else:
            rows = row[verdict.path]
        self.cache.keep(np.concatenate([np.arange(start), start + rows]))
        self.hidden = out.hidden[rows]
        self.extra = {name: value[rows] for name, value in out.extra.items()}
        self.stats.accepted.append(verdict.length)
        return verdict

    def _judge(self, tree: Tree, tokens: np.ndarray, logits: np.ndarray, mode: str, draft_probs, seed: int) -> Verdict:
        """The verification op on a pass's logits (T, vocab), in the tree's node order: each
        node's row processed as the sampler would at that node's own context first."""
        params = self.sampler.params
        temperature = params.temperature if mode == "typical" and params.temperature > 0 else 1.0
        if mode == "sampling" or params.repetition_penalty != 1.0:
            rows = []
            for node in range(tree.size):  # each node's own context: the tokens so far and its path
                context = self.tokens + [int(tokens[i]) for i in tree.path(node)]
                if mode == "sampling":  # the exact distribution the sampler draws from, as log-probabilities
                    with np.errstate(divide="ignore"):
                        rows.append(np.log(self.sampler.probabilities(logits[node], context)))
                else:
                    rows.append(self.sampler.adjust(logits[node], context))
            logits = np.stack(rows)
        return self.verifier(tokens, tree, logits, mode, temperature=temperature, draft_probs=draft_probs, seed=seed)


class Completion:
    """One sequence's new tokens and text, and why it ended: eos, a stop string (the text is
    cut before it), the token budget. ``ready()`` gives the text that can be shown now: a
    multi-byte character is held until complete, and the tail that could still grow into a
    stop string is held until it cannot."""

    def __init__(self, tokenizer: TextTokenizer, eos: set[int], params: SamplingParams, budget: int):
        self.detok = IncrementalDetokenizer(tokenizer)
        self.eos, self.stop, self.budget = eos, params.stop, budget
        # the budget is max_new_tokens, or less where the bundle's context ends first
        self.budget_reason = "max_new_tokens" if budget == params.max_new_tokens else "context"
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.tokens: list[int] = []
        self.text, self.emitted = "", 0
        self.reason: str | None = None

    def add(self, token: int) -> bool:
        """Take one token; True when the sequence is finished (the token may not be kept)."""
        if token in self.eos:
            self.reason = "eos"
            return True
        self.tokens.append(token)
        self.text += self.detok.push(token)
        cut = min((i for i in (self.text.find(s, max(0, self.emitted - self.hold)) for s in self.stop) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.text, self.reason = self.text[:cut], "stop_string"
            return True
        if len(self.tokens) >= self.budget:
            self.reason = self.budget_reason
            return True
        return False

    def ready(self) -> str:
        safe = len(self.text) - self.hold
        if safe <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted:safe], safe
        return piece

    def finish(self) -> str:
        """The rest of the text, once the sequence has ended."""
        if self.reason != "stop_string":
            self.text += self.detok.flush()
        piece, self.emitted = self.text[self.emitted:], len(self.text)
        return piece


class TextStream:
    """The text pieces of one generation, as they are decided; ``result`` holds the
    :class:`GenerationResult` once the stream is exhausted (None before). ``close()`` stops it
    early (the strategy's generator is closed too)."""

    def __init__(self, pieces: Iterator[str], sink: list | None = None):
        self._pieces, self._sink = pieces, sink
        self.result: GenerationResult | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            if self.result is None and done.value is not None:
                self.result = done.value
                if self._sink is not None:
                    self._sink.append(self.result)
            raise

    def close(self) -> None:
        self._pieces.close()


class Generator:
    def __init__(self, bundle: str | os.PathLike | Bundle, device: str = "cpu", threads: int | None = None,
                 verifier: str = "numpy", trusted_keys=None, backend: str = "onnxruntime"):
        """``backend``: the backend plugin the graphs run on (``edgert plugins``; any that runs
        the bundle's ONNX files). ``verifier``: ``numpy`` (the reference) or ``onnx`` (the
        bundle's verify graphs on ONNX Runtime) for the speculative strategies' verification op.
        ``trusted_keys``: public key files the bundle must be signed by (None: the configured
        trust store)."""
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify="used", trusted_keys=trusted_keys)
        info = self.bundle.manifest.get("decoder")
        if self.bundle.kind != "decoder" or not isinstance(info, dict):
            raise BundleError(f"{self.bundle.root}: a {self.bundle.kind} bundle, not a decoder; use 'edgert run'")
        self.info = info
        self.session = DecoderSession(self.bundle, device=device, threads=threads, backend=backend)
        self.tokenizer = TextTokenizer(self.bundle.path(info["tokenizer"]), info, data=self.bundle.read(info["tokenizer"]))
        self.eos = set(info["eos_token_ids"])
        self.device, self.threads = device, threads
        self.resources: dict = {}  # what strategies keep between generations (draft sessions)
        if verifier == "numpy":
            self.verifier = verify
        elif verifier == "onnx":
            if not info.get("verify"):
                raise BundleError(f"{self.bundle.root}: no verify graphs in this bundle (re-export it with this edgert)")
            self.verifier = OnnxVerifier(self.bundle.root, info["verify"], read=self.bundle.read)
        else:
            raise InputError(f"verifier {verifier!r}: expected numpy or onnx")

    @property
    def context(self) -> int:
        return self.session.context

    def encode(self, prompt: str | list[int], chat: bool = False, system: str | None = None) -> list[int]:
        if not isinstance(prompt, str):
            ids = [int(t) for t in prompt]
            if any(not 0 <= t < self.session.vocab_size for t in ids):
                raise InputError(f"prompt token ids must be in 0..{self.session.vocab_size - 1}")
            return ids
        if chat:
            return self.encode_messages(([{"role": "system", "content": system}] if system else [])
                                        + [{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def encode_messages(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation (``[{"role": ..., "content": ...}, ...]``, the shape of transformers' and
        OpenAI's chat APIs) through the bundle's chat template, the assistant's turn opened."""
        if not isinstance(messages, list) or not messages:
            raise InputError("messages: expected a non-empty list of {role, content}")
        for i, message in enumerate(messages):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise InputError(f"messages[{i}]: expected {{'role': str, 'content': str}}")
        # The template writes the special tokens itself (BOS included).
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages), add_special_tokens=False)

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise InputError("empty prompt: give at least one token of text")
        if len(prompt_ids) >= self.context:
            raise InputError(f"prompt has {len(prompt_ids)} tokens; the bundle's context is {self.context} "
                             "(prompt and at least one new token must fit)")

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None, strategy: str = "ar",
               chat: bool = False, system: str | None = None, result: list | None = None,
               strategy_options: dict | None = None) -> "TextStream":
        """Text pieces as they are decided: iterate the returned :class:`TextStream`; its
        ``result`` is the :class:`GenerationResult` once it is exhausted. ``strategy_options``: the
        strategy's options (``--strategy-opt key=value``), checked against what it declares.
        ``result`` (a list; deprecated, use the stream's ``result``) receives it too."""
        params = params or SamplingParams()
        decoder = get_host().get("strategy", strategy).obj
        options = resolve_options(f"strategy {decoder.name!r}", getattr(decoder, "options", {}) or {}, strategy_options or {})
        prompt_ids = self.encode(prompt, chat, system)
        self._check_prompt(prompt_ids)
        return TextStream(self._pieces(decoder, options, prompt_ids, params), result)

    def _pieces(self, decoder, options: dict, prompt_ids: list[int], params: SamplingParams):
        budget = min(params.max_new_tokens, self.context - len(prompt_ids))
        stats = GenerationStats(prompt_tokens=len(prompt_ids))
        state = Decoding(self.session, prompt_ids, Sampler(params), len(prompt_ids) + budget, stats, options,
                         self.resources, self.verifier)
        out = Completion(self.tokenizer, self.eos, params, budget)
        start = time.perf_counter()
        first = last = start
        proposals = decoder.decode(state)
        try:
            for chunk in proposals:
                for token in chunk:
                    last = time.perf_counter()
                    if not out.tokens and out.reason is None:
                        first = last
                    if out.add(int(token)):
                        break
                    state.tokens.append(int(token))
                if out.reason is not None:
                    break
                piece = out.ready()
                if piece:
                    yield piece
        finally:
            proposals.close()
        piece = out.finish()
        if piece:
            yield piece
        stats.new_tokens = len(out.tokens)
        stats.ttft_s = first - start
        stats.decode_s = last - first
        return GenerationResult(out.text, out.tokens, out.reason, stats)

    def generate_batch(self, prompts: list[str | list[int]], params: SamplingParams | None = None, chat: bool = False,
                       system: str | None = None) -> list[GenerationResult]:
        """Several prompts in one batch, autoregressively: prompts are left-padded, padding is
        masked out of attention and skipped by the position ids, and each row stops on its own
        (finished rows ride along until the last one ends). Same tokens as one prompt at a time,
        up to floating-point ties."""
        params = params or SamplingParams()
        encoded = [self.encode(p, chat, system) for p in prompts]
        for ids in encoded:
            self._check_prompt(ids)
        batch, width = len(encoded), max(map(len, encoded))
        if width >= self.context:
            raise InputError(f"longest prompt has {width} tokens; the bundle's context is {self.context}")
        budget = min(params.max_new_tokens, self.context - width)
        pad = self.info.get("pad_token_id")
        pad = pad if pad is not None else sorted(self.eos)[0]
        ids = np.full((batch, width), pad, np.int64)
        visible = np.zeros((batch, width + budget), bool)  # which cache positions hold real tokens
        for row, prompt_ids in enumerate(encoded):
            ids[row, width - len(prompt_ids):] = prompt_ids
            visible[row, width - len(prompt_ids):width] = True
        positions = np.maximum(np.cumsum(visible[:, :width], axis=1) - 1, 0)
        # Causal among real tokens; a padding row sees itself only (a row that sees nothing is undefined in ONNX).
        mask = np.tri(width, dtype=bool)[None] & visible[:, None, :width] | np.eye(width, dtype=bool)[None]
        cache = self.session.new_cache(width + budget, batch)
        t0 = time.perf_counter()
        logits = self.session.forward(cache, ids, positions, mask, np.full((batch, 1), width - 1, np.int64)).logits
        prefill_s = time.perf_counter() - t0
        samplers = [Sampler(params) for _ in range(batch)]
        outs = [Completion(self.tokenizer, self.eos, params, budget) for _ in range(batch)]
        contexts = [list(p) for p in encoded]
        last_positions = positions[:, -1]
        while True:
            step = np.full((batch, 1), pad, np.int64)
            for row in range(batch):
                if outs[row].reason is None:
                    token = samplers[row](logits[row, -1], contexts[row])
                    if not outs[row].add(token):
                        contexts[row].append(token)
                        step[row, 0] = token
                        visible[row, cache.length] = True
            if all(o.reason is not None for o in outs):
                break
            last_positions = last_positions + 1
            col = cache.length
            step_mask = visible[:, None, :col + 1].copy()
            step_mask[:, 0, col] = True  # finished rows: see the padding token itself
            logits = self.session.forward(cache, step, last_positions[:, None], step_mask, np.zeros((batch, 1), np.int64)).logits
        total = time.perf_counter() - t0
        results = []
        for prompt_ids, out in zip(encoded, outs):
            out.finish()
            stats = GenerationStats(prompt_tokens=len(prompt_ids), new_tokens=len(out.tokens), prefill_s=prefill_s,
                                    ttft_s=prefill_s, decode_s=total - prefill_s)
            results.append(GenerationResult(out.text, out.tokens, out.reason, stats))
        return results

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None, strategy: str = "ar",
                 chat: bool = False, system: str | None = None, on_text: Callable[[str], None] | None = None,
                 strategy_options: dict | None = None) -> GenerationResult:
        """Generate to the end; ``on_text`` is called with each text piece as it is decided."""
        stream = self.stream(prompt, params, strategy, chat, system, strategy_options=strategy_options)
        for piece in stream:
            if on_text is not None:
                on_text(piece)
        return stream.result
