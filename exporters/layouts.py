"""Checkpoint layouts of the video recognizers, mapped onto edgert's names.

edgert's modules keep the TSN skeleton's names (``base_model.*`` with torchvision's backbone
names, ``new_fc.*``), which tsn-pytorch, TSM, TRN-pytorch and TAM release as they are. The
others are renamed here, each rule said where it is; ``to_edgert`` picks the layout from the
keys. What a layout fixes about the model (classes, backbone, segments) is read by
``checkpoint_options`` before the model is built.

Layouts:

* ``edgert/official``: ``base_model.*`` + ``new_fc.*`` (our own and most official releases).
  When the official TSN wrapper ran with dropout 0 its class head is the backbone's own
  ``base_model.fc`` / ``base_model.classifier``: that becomes ``new_fc``.
* ``tdn-official`` (MCG-NJU/TDN): ``base_model.layer{1..4}_bak`` are the backbone's layers;
  its FBResNet convolutions carry biases, each folded into the BatchNorm that follows
  (``BN(conv(x) + b)`` is ``BN'(conv(x))`` with ``running_mean' = running_mean - b``: exact);
  ``base_model.conv1_temp`` (the second backbone's conv1, which TDN only copies at
  initialisation) is dropped and listed.
* ``mobilenetv2-flat`` (TSM's ``archs/mobilenet_v2.py`` and the online demo's model, both
  from tonylins/pytorch-mobilenet-v2): blocks number their layers flat
  (``features.N.conv.{0..7}``) where torchvision nests them (``conv.0.0``, ``conv.1.1``,
  ``conv.2``...); the online demo's bare model (``features.*``, ``classifier.*``) is a whole
  classifier whose head becomes ``new_fc``. Width 1.0 only, as every TSM release.
* ``mmaction2``: ``backbone.*`` with ConvModule ``conv``/``bn``, ``cls_head.fc_cls.*``.
* ``torchvision``: a bare ImageNet backbone (its classifier is dropped by the loader).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgert.runtime.errors import EdgertError
from edgert.runtime.options import Fixed

from .checkpoints import _listing


@dataclass
class Converted:
    """A state_dict in edgert's names; ``dropped``: official keys with no place in the model."""

    state: dict
    layout: str
    dropped: list[str] = field(default_factory=list)


# ---- mmaction2 ------------------------------------------------------------------------------
_MMACTION_RULES = [
    (re.compile(r"^backbone\.conv1\.conv\.(.*)$"), r"base_model.conv1.\1"),
    (re.compile(r"^backbone\.conv1\.bn\.(.*)$"), r"base_model.bn1.\1"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.conv(\d)\.conv\.(.*)$"), r"base_model.\1.conv\2.\3"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.conv(\d)\.bn\.(.*)$"), r"base_model.\1.bn\2.\3"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.downsample\.conv\.(.*)$"), r"base_model.\1.downsample.0.\2"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.downsample\.bn\.(.*)$"), r"base_model.\1.downsample.1.\2"),
    (re.compile(r"^cls_head\.fc_cls\.(.*)$"), r"new_fc.\1"),
]


def _from_mmaction2(state: dict, source: str) -> dict:
    out, unmapped = {}, []
    for key, value in state.items():
        for pattern, repl in _MMACTION_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise EdgertError(f"{source}: mmaction2 checkpoint has keys edgert cannot map: {_listing(unmapped)}")
    return out


# ---- TDN (FBResNet with conv biases) --------------------------------------------------------
TDN_UNUSED = ("base_model.conv1_temp.",)


def _batchnorm_after(conv: str) -> str:
    """The BatchNorm that follows conv ``conv`` in FBResNet / TDN: ``...convK`` -> ``...bnK``
    (``conv3_smallscale2`` -> ``bn3_smallscale2``), a Sequential's ``...N`` -> ``...N+1``
    (``downsample.0`` -> ``downsample.1``, ``conv1_5.0`` -> ``conv1_5.1``)."""
    head, _, last = conv.rpartition(".")
    if last.isdigit():
        return f"{head}.{int(last) + 1}"
    return f"{head}.{last.replace('conv', 'bn', 1)}" if last.startswith("conv") else ""


def fold_conv_biases(state: dict, source: str) -> dict:
    """Fold every convolution bias into the BatchNorm after it (exact in eval mode)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".bias") and k[:-5] + ".weight" in state]:
        conv = key[:-5]
        if state[conv + ".weight"].dim() != 4:  # a Linear's or a BatchNorm's bias stays
            continue
        bn = _batchnorm_after(conv)
        if not bn or bn + ".running_mean" not in state:
            raise EdgertError(f"{source}: {key} is a convolution bias with no BatchNorm after it to fold into "
                              f"(expected {bn or 'a BatchNorm'}.running_mean)")
        bias = out.pop(key)
        if bias.shape != state[bn + ".running_mean"].shape:
            raise EdgertError(f"{source}: {key} {list(bias.shape)} does not fit {bn}.running_mean "
                              f"{list(state[bn + '.running_mean'].shape)}")
        out[bn + ".running_mean"] = state[bn + ".running_mean"] - bias.to(state[bn + ".running_mean"].dtype)
    return out


def _from_tdn(state: dict, source: str) -> Converted:
    dropped = [k for k in state if k.startswith(TDN_UNUSED)]
    kept = fold_conv_biases({k: v for k, v in state.items() if k not in dropped}, source)
    renamed = {re.sub(r"^base_model\.layer(\d)_bak\.", r"base_model.layer\1.", k): v for k, v in kept.items()}
    return Converted(renamed, "tdn-official", dropped)


# ---- MobileNetV2 numbered flat (tonylins / TSM) -------------------------------------------------
# Flat index in a block's ``conv`` Sequential -> torchvision's nested name. Expanding blocks:
# pw conv, BN, ReLU6, dw conv, BN, ReLU6, pw-linear conv, BN; the first block (t = 1) has no
# expansion: dw conv, BN, ReLU6, pw-linear conv, BN.
_FLAT_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_FLAT_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_FLAT_KEY = re.compile(r"^(?P<pre>(?:base_model\.)?)features\.(?P<block>\d+)\.conv\.(?P<idx>\d+)\.(?:net\.)?(?P<rest>.+)$")
MOBILENET_LAST = [1280, 320, 1, 1]  # features.18.0.weight at width 1.0


def is_mobilenet_flat(state: dict) -> bool:
    # Only the flat layout has a 7th layer in a block (torchvision's blocks stop at conv.3).
    return any(re.search(r"(^|\.)features\.\d+\.conv\.6\.weight$", k) for k in state)


def _from_mobilenet_flat(state: dict, source: str) -> Converted:
    prefix = "base_model." if any(k.startswith("base_model.") for k in state) else ""
    last = state.get(prefix + "features.18.0.weight")
    if last is not None and list(last.shape) != MOBILENET_LAST:
        raise EdgertError(f"{source}: {prefix}features.18.0.weight is {list(last.shape)}, MobileNetV2 width 1.0 has "
                          f"{MOBILENET_LAST}: another width multiplier; edgert builds width 1.0 (TSM's releases)")
    expanding = {m.group("block") for k in state if (m := _FLAT_KEY.match(k)) and m.group("idx") == "6"}
    out: dict = {}
    for key, value in state.items():
        m = _FLAT_KEY.match(key)
        if m:
            table = _FLAT_EXPAND if m.group("block") in expanding else _FLAT_NO_EXPAND
            if m.group("idx") not in table:
                raise EdgertError(f"{source}: {key}: no layer {m.group('idx')} in a MobileNetV2 block")
            key = f"base_model.features.{m.group('block')}.conv.{table[m.group('idx')]}.{m.group('rest')}"
        elif not prefix and key.startswith("classifier."):  # the online demo's whole classifier
            key = "new_fc." + key[len("classifier."):]
        elif not prefix:
            key = "base_model." + key
        out[key] = value
    return Converted(out, "mobilenetv2-flat")


# ---- choosing the layout ---------------------------------------------------------------------
def _head_as_new_fc(state: dict) -> dict:
    """The official TSN wrapper with dropout 0 keeps the backbone's classifier as the head."""
    if any(k.startswith("new_fc.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        m = re.match(r"^base_model\.(fc|classifier)\.(weight|bias)$", key)
        out[f"new_fc.{m.group(2)}" if m else key] = value
    return out


def to_edgert(state: dict, source: str) -> Converted:
    """``state`` (a checkpoint's tensors) in edgert's names, with the layout it was found in.

    TSM's wrappers (``conv1.net``) are kept as given: the loader matches ``.net`` segments
    against the model it fills, which has them where it shifts."""
    if is_mobilenet_flat(state):
        converted = _from_mobilenet_flat(state, source)
    elif any(k.startswith("base_model.layer1_bak.") for k in state):
        converted = _from_tdn(state, source)
    elif any(k.startswith("base_model.") for k in state):
        converted = Converted(state, "edgert/official")
    elif any(k.startswith("backbone.") for k in state):
        return Converted(_from_mmaction2(state, source), "mmaction2")
    elif any(k.startswith(("layer1.", "features.")) for k in state):
        return Converted(state, "torchvision")
    else:
        raise EdgertError(f"{source}: unrecognised checkpoint layout (expected 'base_model.*', mmaction2 'backbone.*' "
                          f"or torchvision backbone keys); first keys: {', '.join(list(state)[:4])}")
    converted.state = _head_as_new_fc(converted.state)
    return converted


def _resnet_name(state: dict) -> str | None:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^base_model\.layer3\.(\d+)\.", k))}
    # TAM wraps every block as ``net`` (``layer1.0.net.conv3``); TSM wraps only its convs
    bottleneck = any(re.match(r"^base_model\.layer1\.0\.(?:net\.)?conv3\.", k) for k in state)
    return {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50",
            (23, True): "resnet101"}.get((len(blocks), bottleneck))


def checkpoint_options(converted: Converted) -> dict[str, Fixed]:
    """What a checkpoint in edgert's names fixes (``{option: Fixed}``): the
    class count (from the class head; TRN: its relation MLPs), the backbone (MobileNetV2, or
    the ResNet depth from layer3's block count and the block type) and, for TRN, the segments
    (the largest relation takes all of them)."""
    state, found = converted.state, {}
    if converted.layout == "torchvision":
        return found  # a bare backbone: the class head starts fresh
    if "base_model.features.0.0.weight" in state:
        found["backbone"] = Fixed("mobilenetv2", "MobileNetV2 keys (base_model.features.*)")
    elif (resnet := _resnet_name(state)) is not None:
        found["backbone"] = Fixed(resnet, f"{resnet}'s blocks under base_model.layer1-4")
    relation = state.get("consensus.fc_fusion_scales.0.3.weight")
    head = "consensus.fc_fusion_scales.0.3.weight" if relation is not None else "new_fc.weight"
    if head in state and state[head].dim() == 2:
        found["num_classes"] = Fixed(int(state[head].shape[0]), f"{head} is {list(state[head].shape)}")
    largest, per_frame = state.get("consensus.fc_fusion_scales.0.1.weight"), state.get("new_fc.weight")
    if relation is not None and largest is not None and per_frame is not None and per_frame.shape[0]:
        frames, rest = divmod(int(largest.shape[1]), int(per_frame.shape[0]))
        if rest == 0:
            found["segments"] = Fixed(frames, f"consensus.fc_fusion_scales.0.1.weight takes {frames} frames' features")
    return found
