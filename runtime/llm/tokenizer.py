"""The bundle's tokenizer: Hugging Face ``tokenizers`` for the text <-> ids mapping, jinja2 for
chat templates (the same sandboxed environment transformers renders them in), and an
incremental detokenizer that streams text correctly across multi-byte characters."""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from ..errors import BundleError, InputError, first_line


MAX_NORMALIZER_GROWTH = 8  # how many times longer the normalizers may make a text (real ones: 1-2)


def _load(path: Path, data: bytes | None = None):
    from tokenizers import Tokenizer

    try:
        text = path.read_bytes().decode("utf-8") if data is None else data.decode("utf-8")
        tokenizer = Tokenizer.from_str(text)
    except UnicodeDecodeError as err:
        raise BundleError(f"{path}: not a readable tokenizer.json (not UTF-8: {err.reason} at byte {err.start})") from None
    except OSError as err:
        raise BundleError(f"{path}: cannot read the tokenizer ({err.strerror})") from None
    except Exception as err:  # tokenizers raises a bare Exception with serde's message
        raise BundleError(f"{path}: not a readable tokenizer.json ({first_line(err)})") from None
    import json

    growth = _growth(json.loads(text).get("normalizer"))
    if growth > MAX_NORMALIZER_GROWTH:
        # six Replace("a" -> 100 x "a") make a 10-character prompt 10**12 long: the process aborts
        raise BundleError(f"{path}: its normalizers can make a text {growth:.3g} times longer; edgert refuses more "
                          f"than {MAX_NORMALIZER_GROWTH}")
    return tokenizer


def _growth(normalizer) -> float:
    """How many times longer ``normalizer`` (tokenizer.json's) can make a text, at most."""
    if not isinstance(normalizer, dict):
        return 1.0
    kind = normalizer.get("type")
    if kind == "Sequence":
        total = 1.0
        for part in normalizer.get("normalizers") or []:
            total *= _growth(part)
        return total
    if kind == "Replace":
        pattern, content = normalizer.get("pattern") or {}, normalizer.get("content") or ""
        if not isinstance(content, str) or not isinstance(pattern, dict):
            return 1.0
        if isinstance(pattern.get("String"), str) and pattern["String"]:
            return max(1.0, len(content) / len(pattern["String"]))
        return len(content) + 1.0  # a regex may match an empty string: the content between any two characters
    # Unicode normal forms and the rest grow a text by a bounded amount, not by a factor a chain multiplies
    return 1.0


def check_vocab(path: Path, vocab_size: int) -> None:
    """A tokenizer that can emit ids beyond the model's embedding would index out of range."""
    TextTokenizer(path, {"vocab_size": vocab_size})


TEMPLATE_SECONDS = 2.0  # a chat template is a few loops over the messages: milliseconds
TEMPLATE_CHARS = 1 << 20
TEMPLATE_MEMORY = 256 << 20  # bytes of memory a rendering may add to what the process holds


def _resident() -> int:
    """This process's resident memory now, in bytes. Not getrusage's peak: a process that once
    held a large model has a high-water mark far above what it holds, and a template would then
    be stopped by the clock long after it passed its memory bound."""
    import os

    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _limited(pieces) -> str:
    """Join a template's output, stopping it past TEMPLATE_SECONDS, TEMPLATE_CHARS or
    TEMPLATE_MEMORY. Time and memory are checked on every line the compiled template runs (a
    trace function on its frames only, this thread only), so a loop that prints nothing, or one
    that doubles a string in a namespace, is stopped too."""
    import sys
    import time

    deadline, ceiling = time.monotonic() + TEMPLATE_SECONDS, _resident() + TEMPLATE_MEMORY

    def local(frame, event, arg):
        if time.monotonic() > deadline:
            raise BundleError(f"chat template of this bundle ran longer than {TEMPLATE_SECONDS:g} s; refusing it")
        if _resident() > ceiling:
            raise BundleError(f"chat template of this bundle used more than {TEMPLATE_MEMORY >> 20} MB; refusing it")
        return local

    def calls(frame, event, arg):
        return local if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        out, size = [], 0
        for piece in pieces:
            size += len(piece)
            if size > TEMPLATE_CHARS:
                raise BundleError(f"chat template of this bundle renders more than {TEMPLATE_CHARS} characters; refusing it")
            out.append(piece)
        return "".join(out)
    finally:
        sys.settrace(previous)


_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(?:\(\w*\))?(\d+)|%[-+ #0]*\d*\.(\d+)")


def _repeated_length(sequence, times) -> int:
    """The length ``sequence * times`` would have (0 when it is not a repetition)."""
    if isinstance(sequence, (str, list)) and isinstance(times, int):
        return len(sequence) * times
    return 0


@lru_cache(maxsize=1)
def _template_environment():
    """Jinja's immutable sandbox, as transformers renders chat templates in, with the two
    operations no time check can stop bounded: "x" * 10**9 and 9 ** (9 ** 9)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise BundleError(f"chat template of this bundle raises to the power {right}; refusing it")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() * right > TEMPLATE_CHARS:  # ((9 ** 64) ** 64) ** 64 ...
                raise BundleError(f"chat template of this bundle computes a power over {TEMPLATE_CHARS} bits; refusing it")
            if operator == "*" and max(_repeated_length(left, right), _repeated_length(right, left)) > TEMPLATE_CHARS:
                raise BundleError(f"chat template of this bundle builds a value over {TEMPLATE_CHARS} characters")
            if operator == "%" and isinstance(left, str) and any(int(n or 0) > TEMPLATE_CHARS for pair in
                                                                  _FORMAT_WIDTH.findall(left) for n in pair):
                raise BundleError(f"chat template of this bundle formats a field wider than {TEMPLATE_CHARS} characters")
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own signature)
            # str.replace multiplies a string in one call no line check can interrupt
            if getattr(__obj, "__name__", None) == "replace" and isinstance(getattr(__obj, "__self__", None), str) \
                    and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                text, old, new = __obj.__self__, args[0], args[1]
                grown = len(text) + (text.count(old) if old else len(text) + 1) * (len(new) - len(old))
                if grown > TEMPLATE_CHARS:
                    raise BundleError(f"chat template of this bundle builds a value over {TEMPLATE_CHARS} characters")
            return super().call(__context, __obj, *args, **kwargs)

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.pop("lipsum", None)  # lipsum(1000000): seconds of text in one call; no chat template needs it
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class TextTokenizer:
    def __init__(self, path: Path, decoder: dict, data: bytes | None = None):
        """``data``: the file's bytes as the bundle read and checked them (else ``path`` is read)."""
        self.path = Path(path)
        self.tokenizer = _load(self.path, data)
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if size > decoder["vocab_size"]:
            raise BundleError(f"{path}: tokenizer has {size} tokens but the model's vocab_size is {decoder['vocab_size']}; "
                              "tokenizer and weights do not belong together")
        self.info = decoder

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate (JSON's "\ud800"): no text a tokenizer can read
            raise InputError(f"the text holds a lone surrogate (U+{ord(text[err.start]):04X} at character "
                             f"{err.start}), which is not Unicode text") from None
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        except BaseException as err:
            # a Rust panic (a regex past Oniguruma's retry limit: backtracking bounded, then a panic)
            # arrives as pyo3's PanicException, a BaseException no "except Exception" stops
            if type(err).__name__ != "PanicException":
                raise
            raise BundleError(f"{self.path}: the bundle's tokenizer failed on this text ({first_line(err)})") from None
        bos = self.info.get("bos_token_id")
        # Some checkpoints ask for BOS in tokenizer_config.json rather than in the post-processor.
        if add_special_tokens and self.info.get("add_bos_token") and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        template = self.info.get("chat_template")
        if not template:
            raise InputError("this bundle's checkpoint has no chat template; run without --chat")
        import jinja2

        try:
            compiled = _template_environment().from_string(template)
            pieces = compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=self.info.get("bos_token") or "", eos_token=self.info.get("eos_token") or "")
            return _limited(pieces)
        except jinja2.TemplateError as err:
            raise BundleError(f"chat template of this bundle fails to render: {err}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError, MemoryError) as err:
            # the template's own code failing ({{ 1/0 }}, an include with no loader, a recursive
            # macro): the template is at fault, whatever Python error it raised
            raise BundleError(f"chat template of this bundle fails to render: {type(err).__name__}: "
                              f"{first_line(err)}") from None


def check_chat_template(info: dict) -> None:
    """Render ``info``'s chat template once on a one-message conversation: a template that leaves
    the sandbox, breaks a bound or does not parse raises BundleError before anything is written
    (a template's own raise_exception, on a conversation shape it refuses, is not checked)."""
    if not info.get("chat_template"):
        return
    probe = TextTokenizer.__new__(TextTokenizer)
    probe.info = info
    try:
        probe.apply_chat_template([{"role": "user", "content": "Hello"}])
    except InputError:
        pass


class IncrementalDetokenizer:
    """Text pieces as tokens arrive. A byte-level BPE token can end inside a UTF-8 character;
    its text is held back (it decodes to U+FFFD) until the character is complete. Only a short
    window is re-decoded per token (the scheme of vLLM's detokenizer): the window starts at a
    token already emitted, so tokenizer decoders that strip a leading space treat the old and
    the new text alike."""

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0    # end of what has been emitted

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], self.skip)
        text = self.tokenizer.decode(self.ids[self.prefix:], self.skip)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]

    def flush(self) -> str:
        """What is left at the end (an incomplete character shows as U+FFFD, as decode would)."""
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], self.skip)
        text = self.tokenizer.decode(self.ids[self.prefix:], self.skip)
        self.prefix = self.read = len(self.ids)
        return text[len(before):]
