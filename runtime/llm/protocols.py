"""The typed contracts of the LLM plugins: what the host expects of a decoder family, a decoding
strategy and a speculative head. :mod:`edgert.runtime.hookspecs` is their manual; these
Protocols are what a type checker (and a reader) holds a plugin to. Export-side arguments are
named by their exporter types as strings: the runtime never imports the exporters (or torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from ..options import Option
    from ..host import Registered
    from .generator import Decoding
    from .session import DecoderSession


@runtime_checkable
class DecoderFamily(Protocol):
    """Turns a checkpoint into a decoder bundle (``edgert export <name> --checkpoint DIR``)."""

    name: str
    description: str
    paper: str
    options: "dict[str, Option]"

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]: ...

    def export(self, registered: "Registered", out: "Path", request: "ExportRequest") -> "Path":
        """Write the bundle; import torch inside. ``request`` carries the checkpoint, options,
        precision, tolerance, flavour, quantization knobs and calibration text
        (:class:`edgert.exporters.llm.export.ExportRequest`)."""


class ExportRequest(Protocol):
    """What ``edgert export`` asks of a decoder family (see the exporter's dataclass)."""

    checkpoint: str | None
    options: dict[str, str]
    precision: str
    tolerance: float | None
    force: bool
    seed: int
    flavour: str
    quantization: dict[str, Any] | None
    calibration: str | None


@runtime_checkable
class Strategy(Protocol):
    """A decoding strategy (``edgert generate --strategy <name>``)."""

    name: str
    description: str

    def decode(self, d: "Decoding") -> Iterator[list[int]]:
        """Yield each list of tokens decided, in order; the Generator stops consuming at eos, a
        stop string, the token budget or the context and closes the generator."""


@runtime_checkable
class Head(Protocol):
    """A speculative head family: graphs a bundle carries beside its decoder that propose
    tokens (Medusa heads, an MTP module, an EAGLE draft layer).

    ``what`` (optional) is how messages name one (``"Medusa heads"``). ``name`` is the head's one
    word everywhere: ``--opt <name>=FILE`` at export (``file_help``
    says what FILE is), ``decoder.heads.<name>`` in the manifest, ``d.head(<name>)`` in a
    strategy and ``edgert train <name>`` when the head can be trained (``train_options`` and
    ``trainee``). ``flavours``: the graph flavours it can join (``"onnx"``, ``"trt"``).
    """

    name: str
    description: str
    paper: str
    file_help: str
    flavours: tuple[str, ...]

    def plan(self, ctx: Any, source: str) -> tuple[list[Any], dict[str, Any]]:
        """Export side (import torch inside): from an
        :class:`edgert.exporters.llm.plan.ExportContext` and the file given with ``--opt
        <name>=``, the head's :class:`~edgert.exporters.llm.plan.GraphJob` list and its manifest
        entry (at least ``{"graph": <its graph's name>}``)."""

    # Optional: def taps(self, config) -> tuple[int, ...]: the layers whose input hidden states the
    # head reads; the decoder graph returns them as hidden_states.{i}, a strategy reads d.extra.

    def open(self, target: "DecoderSession", entry: dict[str, Any]) -> Any:
        """Run side (numpy and the backend only): the object a strategy drives, its graphs opened
        on the target's backend, device and threads."""
