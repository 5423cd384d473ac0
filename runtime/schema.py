"""The manifest's types, every field the runtime reads, checked recursively before anything uses it.

A small declarative schema (``Int``, ``Num``, ``Str``, ``List``, ``Obj``, ``Map``, ``Opt``) is
enough: a manifest is JSON written by edgert, and a hostile or damaged one must end in one line
naming the field (``graphs.main.inputs[0].dims``), never in a KeyError three calls later. Sizes
that would exhaust memory are bounded here too, with the bound in the message. Fields edgert
does not read are left alone (newer exporters may add some); cross-field rules (files listed,
state pairs) stay in :func:`edgert.runtime.bundle.validate_manifest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class SchemaError(Exception):
    """``path``: where; ``str``: what is wrong there."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}" if path else problem)


def _name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Int:
    lo: int = -(2**63)
    hi: int = 2**63 - 1

    def check(self, value, path):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SchemaError(path, f"expected an integer, given {_name(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(path, f"{value} is outside [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class Num:
    lo: float = -math.inf
    hi: float = math.inf

    def check(self, value, path):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise SchemaError(path, f"expected a finite number, given {_name(value)}")
        if not self.lo <= value <= self.hi:
            raise SchemaError(path, f"{value} is outside [{self.lo}, {self.hi}]")


@dataclass(frozen=True)
class Str:
    choices: tuple = ()
    max_len: int = 1 << 20

    def check(self, value, path):
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, given {_name(value)}")
        if len(value) > self.max_len:
            raise SchemaError(path, f"{len(value)} characters; at most {self.max_len}")
        if self.choices and value not in self.choices:
            raise SchemaError(path, f"{value!r} is not one of {list(self.choices)}")


@dataclass(frozen=True)
class Bool:
    def check(self, value, path):
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, given {_name(value)}")


@dataclass(frozen=True)
class Anything:
    def check(self, value, path):
        pass


@dataclass(frozen=True)
class Opt:
    """The value, or null."""
    of: Any

    def check(self, value, path):
        if value is not None:
            self.of.check(value, path)


@dataclass(frozen=True)
class OneOf:
    options: tuple

    def check(self, value, path):
        for option in self.options:
            try:
                return option.check(value, path)
            except SchemaError:
                pass
        raise SchemaError(path, f"given {_name(value)}, which fits none of its forms")


@dataclass(frozen=True)
class List:
    of: Any
    min_len: int = 0
    max_len: int = 1 << 20

    def check(self, value, path):
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, given {_name(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(path, f"{len(value)} items; expected {self.min_len} to {self.max_len}")
        for i, item in enumerate(value):
            self.of.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class Map:
    """An object whose keys are names chosen by the exporter (graphs, files, options)."""
    of: Any
    max_len: int = 1 << 16
    min_len: int = 0

    def check(self, value, path):
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected an object, given {_name(value)}")
        if not self.min_len <= len(value) <= self.max_len:
            raise SchemaError(path, f"{len(value)} entries; expected {self.min_len} to {self.max_len}")
        for key, item in value.items():
            self.of.check(item, f"{path}.{key}" if path else key)


@dataclass(frozen=True)
class Obj:
    """An object with named fields; ``required`` ones must be there."""
    fields: dict = field(default_factory=dict)
    required: tuple = ()

    def check(self, value, path):
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected an object, given {_name(value)}")
        for key in self.required:
            if key not in value:
                raise SchemaError(path, f"missing field {key!r}")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], f"{path}.{key}" if path else key)


DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool")
KINDS = ("detector", "decoder")
NAME = Str(max_len=256)
DIM = OneOf((Int(1, 1 << 31), Str(max_len=64)))
TENSOR = Obj({"name": NAME, "dtype": Str(DTYPES),
              "dims": List(DIM, max_len=8)}, required=("name", "dtype", "dims"))
GRAPH = Obj({"file": Str(max_len=1024), "engine": Str(max_len=1024), "inputs": List(TENSOR, 1, 1024),
             "outputs": List(TENSOR, 1, 1024), "state": List(List(NAME, 2, 2), max_len=1024),
             "external_data": List(Str(max_len=1024), max_len=64)},
            required=("file", "inputs", "outputs"))
SIZE = Int(1, 8192)  # pixels: a frame larger than 8192 on a side is not a model input
PREPROCESSING = Obj({
    "sampling": Str(max_len=64), "segments": Int(1, 1024), "new_length": Int(1, 256), "scale_size": SIZE,
    "crop_size": SIZE, "channel_order": Str(("RGB", "BGR")), "input_scale": Num(0, 1e6),
    "mean": List(Num(-1e6, 1e6), 1, 4), "std": List(Num(1e-12, 1e6), 1, 4), "layout": Str(max_len=16),
    "modality": Str(max_len=16), "flow_bound": Num(1e-6, 1e6), "flow_method": Str(max_len=32),
    "short_clip": Str(max_len=16), "chunk_frames": Int(1, 1 << 16), "feature_dim": Int(1, 1 << 20),
    "average_steps": Int(1, 1 << 16), "ambiguous": Int(-1, 1 << 20)})
TOKEN = Int(0, 1 << 31)
DECODER = Obj({
    "graph": NAME, "tokenizer": Str(max_len=1024), "context": Int(1, 1 << 24), "kv_dtype": Str(("float32", "float16")),
    "num_layers": Int(1, 1024), "num_kv_heads": Int(1, 4096), "head_dim": Int(1, 4096), "vocab_size": Int(1, 1 << 24),
    "verify": Map(Str(max_len=1024), max_len=16), "kv_compact": Str(max_len=1024), "backend": Str(("onnx", "trt")),
    "eos_token_ids": List(TOKEN, max_len=64), "bos_token_id": Opt(TOKEN), "pad_token_id": Opt(TOKEN),
    "chat_template": Opt(Str(max_len=1 << 20)), "bos_token": Opt(Str(max_len=1024)), "eos_token": Opt(Str(max_len=1024)),
    "add_bos_token": Bool(),
    "medusa": Opt(Obj({"graph": NAME, "num_heads": Int(1, 64), "num_layers": Int(0, 64)}, required=("graph", "num_heads"))),
    "mtp": Opt(Obj({"graph": NAME}, required=("graph",))),
    # speculative heads (edgert_register_heads): name -> the head's entry, at least its graph
    "heads": Map(Obj({"graph": NAME}, required=("graph",)), max_len=64),
    "taps": List(Int(0, 1023), max_len=64),  # layers whose input hidden states the decoder graph returns
    # a call whose last position passes this rotates with other frequencies (Phi-3's LongRoPE):
    # the cache written at or below it is computed again when a call first crosses it
    "rope_switch": Int(1, 1 << 24),
    # rows a one-token step runs as (2: the token and a masked copy, the kernels' multi-row path,
    # bit-identical to a verify pass's rows)
    "step_rows": Int(1, 2),
    "plugins": Obj({"library": Str(max_len=256), "ops": List(NAME, max_len=64)})},
    required=("graph", "tokenizer", "context", "kv_dtype", "num_layers", "num_kv_heads", "head_dim", "vocab_size",
              "eos_token_ids"))
REPORT = Obj({"passed": Bool(), "tolerance": Num(0, 1e6), "backend": Str(max_len=1024),
              "outputs": Map(Obj({"max_rel": Num(), "max_abs": Num(), "passed": Bool(), "allowed": Num(),
                                 "rounding": Num(), "max_rel_fp32": Num()}, required=("max_rel", "max_abs")))},
             required=("tolerance", "backend", "outputs"))
QUANTIZATION = Map(Obj({"method": Str(max_len=1024), "format": Str(max_len=256), "weights": Str(max_len=1024),
                        "activations": Str(max_len=1024), "params": Map(Anything(), max_len=64),
                        "accuracy": Map(Anything(), max_len=64),
                        "calibration": Opt(Obj({"path": Str(max_len=4096), "sha256": Str(max_len=64)}))},
                       required=("method",)), max_len=64)
MANIFEST = Obj({
    "schema_version": Int(), "kind": Str(KINDS),
    "plugin": Obj({"name": NAME, "package": NAME, "version": Str(max_len=128)}, required=("name", "package", "version")),
    "model": Obj({"name": Str(max_len=256), "paper": Str(max_len=4096), "options": Map(Anything(), max_len=256),
                  "details": Map(Anything(), max_len=256), "seed": Int(),
                  "checkpoint": Opt(Obj({"path": Str(max_len=4096)}, required=("path",))),
                  "training_only": List(Str(max_len=256), max_len=256)},
                 required=("options", "seed")),
    "graphs": Map(GRAPH, min_len=1, max_len=64), "preprocessing": PREPROCESSING,
    "labels": List(Str(max_len=1024), max_len=1 << 16), "precision": Str(max_len=16),
    "provenance": Map(OneOf((Str(max_len=1024), Int())), max_len=64),
    "files": Map(Str(max_len=64), max_len=4096), "parity": Obj({"passed": Bool(), "graphs": Map(REPORT, max_len=64)},
                                                                required=("graphs",)),
    "decoder": DECODER, "quantization": QUANTIZATION},
    required=("schema_version", "kind", "plugin", "model", "graphs", "preprocessing", "labels", "precision",
              "provenance", "files", "parity"))
