"""Detection metrics against hand-computed values."""

import numpy as np
import pytest

from edgert.runtime.errors import InputError
from edgert.runtime.metrics import average_precision, calibrated_average_precision, perframe_metrics, timeline_png


def test_average_precision_by_hand():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([.9, .8, .7, .6, .5, .4, .3, .2])
    # positives at ranks 1, 3, 4, 7: precisions 1, 2/3, 3/4, 4/7
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 7) / 4)
    # a tie between a positive and a negative counts as one threshold: precision 1/2 there
    assert average_precision(np.array([1, 0]), np.array([.5, .5])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.zeros(3), np.ones(3)))


def test_calibrated_average_precision_by_hand():
    # 2 positives, 6 negatives: w = 3. Ranks: +, -, -, +, -, -, -, -
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])
    s = -np.arange(8.0)
    # at rank 1: TP=1, FP=0 -> 1; at rank 4: TP=2, FP=2 -> 3*2 / (3*2 + 2) = 0.75
    assert calibrated_average_precision(y, s) == pytest.approx((1 + 0.75) / 2)
    assert average_precision(y, s) == pytest.approx((1 + 2 / 4) / 2)  # uncalibrated: 0.5 at rank 4


def test_thumos_protocol():
    # classes: 0 background, 1, 2 actions, 3 ambiguous
    labels = np.array([0, 1, 1, 3, 0, 2, 0, 0])
    scores = np.array([[.9, .1, 0, 0], [.2, .8, 0, 0], [.5, .4, .1, 0], [0, .9, 0, .1],
                       [.1, .6, .3, 0], [.3, 0, .7, 0], [.8, 0, .2, 0], [.7, .1, .2, 0]])
    result = perframe_metrics(scores, labels, background=0, ambiguous=3)
    assert result.frames == 7 and result.ignored_frames == 1   # the ambiguous frame is dropped
    by_class = {c: (n, ap) for c, n, ap, _ in result.per_class}
    assert set(by_class) == {1, 2}                              # background and ambiguous left out
    # class 1 over the 7 frames: scores .1 .8 .4 .6 0 0 .1, positives at .8 (rank 1) and .4 (rank 3)
    assert by_class[1][1] == pytest.approx((1 + 2 / 3) / 2)
    assert by_class[2][1] == pytest.approx(1.0)                 # the single positive ranks first
    assert result.map == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_class_without_positives_is_left_out_of_the_mean():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([[1, 0, .3], [0, 1, .2], [1, 0, .9], [0, .5, .1]])
    result = perframe_metrics(scores, labels)
    assert [(c, n) for c, n, _, _ in result.per_class] == [(1, 2), (2, 0)]
    assert result.map == pytest.approx(1.0)


def test_bad_metric_inputs(tmp_path):
    with pytest.raises(InputError, match="labels have 3 frames but scores have 4"):
        perframe_metrics(np.zeros((4, 3)), np.zeros(3, int))
    with pytest.raises(InputError, match="NaN or inf"):
        perframe_metrics(np.full((2, 3), np.nan), np.zeros(2, int))
    with pytest.raises(InputError, match="class indices must be integers in 0..2"):
        perframe_metrics(np.zeros((2, 3)), np.array([0, 5]))


def test_timeline_png(tmp_path):
    import cv2

    labels = np.array([0] * 10 + [1] * 10 + [2] * 5 + [0] * 5)
    scores = np.eye(3)[labels] * 0.9
    timeline_png(tmp_path / "t.png", scores, labels, ["bg", "jump", "run"])
    image = cv2.imread(str(tmp_path / "t.png"))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 1000
