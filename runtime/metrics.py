"""Per-frame detection metrics for online action detection, numpy only.

* ``average_precision``: non-interpolated AP over distinct score thresholds (the definition
  scikit-learn's ``average_precision_score`` uses, which TRN.pytorch and LSTR call).
* ``calibrated_average_precision``: TVSeries' cAP (De Geest et al., ECCV 2016): with
  ``w = negatives / positives``, calibrated precision ``w*TP / (w*TP + FP)`` averaged over the
  positives' ranks — insensitive to the positive/negative ratio of each class.
* ``perframe_metrics``: THUMOS'14 protocol (TRN.pytorch's ``compute_result_multilabel``):
  frames labelled ambiguous are removed, per-class AP over all remaining frames, the mean
  leaves out the background and ambiguous classes. A class with no positive frame has no AP;
  it is reported as such and left out of the mean (rather than counted as 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    target = np.asarray(target, dtype=bool)
    positives = int(target.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(score, dtype=np.float64)[order], target[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # one threshold per distinct score
    tps = np.cumsum(y)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def calibrated_average_precision(target: np.ndarray, score: np.ndarray) -> float:
    target = np.asarray(target, dtype=bool)
    positives, negatives = int(target.sum()), int((~target).sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    y = target[order]
    tps, fps = np.cumsum(y), np.cumsum(~y)
    w = negatives / positives
    calibrated = np.where(y, w * tps / np.maximum(w * tps + fps, 1e-12), 0.0)
    return float(calibrated.sum() / positives)


def to_multi_hot(labels: np.ndarray, num_classes: int, where: str = "labels") -> np.ndarray:
    """(T,) class indices or (T, C) one/multi-hot -> (T, C) bool."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu" or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
            raise InputError(f"{where}: class indices must be integers in 0..{num_classes - 1}")
        out = np.zeros((len(labels), num_classes), bool)
        out[np.arange(len(labels)), labels] = True
        return out
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return labels > 0.5
    raise InputError(f"{where}: expected (T,) class indices or (T, {num_classes}) one-hot, given shape {list(labels.shape)}")


@dataclass
class PerFrameResult:
    map: float
    mcap: float
    per_class: list[tuple[int, int, float, float]]  # (class, positives, AP, cAP)
    frames: int
    ignored_frames: int


def perframe_metrics(scores: np.ndarray, labels: np.ndarray, background: int = 0, ambiguous: int = -1) -> PerFrameResult:
    """Per-frame mAP and mcAP of ``scores`` (T, C) against ``labels`` ((T,) or (T, C))."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise InputError(f"scores: expected a (T, C) array, given shape {list(scores.shape)}")
    if not np.isfinite(scores).all():
        raise InputError("scores: contain NaN or inf")
    if len(labels) != len(scores):
        raise InputError(f"labels have {len(labels)} frames but scores have {len(scores)}")
    if not len(scores):
        raise InputError("scores: no frames to evaluate (an mAP over nothing is undefined)")
    target = to_multi_hot(labels, scores.shape[1])
    keep = ~target[:, ambiguous] if ambiguous >= 0 else np.ones(len(target), bool)
    if not keep.any():
        raise InputError(f"every one of the {len(keep)} frames is ambiguous (class {ambiguous}): nothing left to evaluate")
    scores, target = scores[keep], target[keep]
    per_class = []
    for c in range(scores.shape[1]):
        if c in (background, ambiguous):
            continue
        per_class.append((c, int(target[:, c].sum()), average_precision(target[:, c], scores[:, c]),
                          calibrated_average_precision(target[:, c], scores[:, c])))
    aps = [ap for _, n, ap, _ in per_class if n > 0]
    caps = [cap for _, n, _, cap in per_class if n > 0]
    return PerFrameResult(float(np.mean(aps)) if aps else float("nan"), float(np.mean(caps)) if caps else float("nan"),
                          per_class, int(keep.sum()), int((~keep).sum()))


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def timeline_png(path, scores: np.ndarray, labels: np.ndarray, names: list[str], background: int = 0,
                 ambiguous: int = -1, max_classes: int = 8, width: int = 1200) -> None:
    """Per-class score curves over time with the ground-truth segments shaded, one row per
    class (the classes with the most positive frames), written as a PNG with OpenCV."""
    import cv2

    target = to_multi_hot(labels, scores.shape[1])
    classes = [c for c in np.argsort(-target.sum(0)) if c not in (background, ambiguous) and target[:, c].any()]
    classes = classes[:max_classes] or [c for c in range(scores.shape[1]) if c not in (background, ambiguous)][:1]
    row, left, top = 70, 170, 30
    image = np.full((top + row * len(classes) + 20, left + width + 20, 3), 255, np.uint8)
    t = len(scores)
    xs = left + (np.arange(t) * (width - 1) / max(t - 1, 1)).astype(np.int32)
    cv2.putText(image, f"per-chunk scores ({t} chunks); shaded: ground truth", (left, 20), cv2.FONT_HERSHEY_SIMPLEX,
                0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for r, c in enumerate(classes):
        y0 = top + r * row
        for i in np.flatnonzero(target[:, c]):
            x1 = xs[min(i + 1, t - 1)] if i + 1 < t else left + width
            cv2.rectangle(image, (int(xs[i]), y0 + 5), (int(x1), y0 + row - 5), (200, 230, 200), -1)
        cv2.rectangle(image, (left, y0 + 5), (left + width, y0 + row - 5), (180, 180, 180), 1)
        ys = (y0 + row - 6 - np.clip(scores[:, c], 0, 1) * (row - 12)).astype(np.int32)
        cv2.polylines(image, [np.stack([xs, ys], 1)], False, (200, 60, 20), 1, cv2.LINE_AA)
        cv2.putText(image, names[c][:20] if c < len(names) else f"class {c}", (8, y0 + row // 2 + 4),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), image):
        raise InputError(f"{path}: cannot write the PNG")
