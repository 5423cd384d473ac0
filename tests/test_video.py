"""Clip sources, TSN sampling and preprocessing (numpy) against their references."""

import numpy as np
import pytest
from edgert.exporters.synthetic import render_clip, write_video
from edgert.runtime.errors import InputError
from edgert.runtime.video import center_crop, open_clip, preprocess, resize, resize_shorter, segment_indices


def tsn_pytorch_test_indices(num_frames, num_segments, new_length=1):
    """tsn-pytorch's TSNDataSet._get_test_indices, 1-based there, made 0-based."""
    tick = (num_frames - new_length + 1) / float(num_segments)
    return np.array([int(tick / 2.0 + tick * x) for x in range(num_segments)])


@pytest.mark.parametrize("frames,segments", [(300, 8), (25, 3), (8, 8), (7, 8), (1, 3), (100, 25)])
def test_segment_indices_match_tsn(frames, segments):
    idx = segment_indices(frames, segments)
    assert len(idx) == segments
    np.testing.assert_array_equal(idx, tsn_pytorch_test_indices(frames, segments))
    assert idx.min() >= 0 and idx.max() < frames
    assert (np.diff(idx) >= 0).all()


def test_short_clip_repeats_frames():
    assert list(segment_indices(3, 8)) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_short_clip_of_tdn_starts_every_snippet_at_the_first_frame():
    """TDN's test sampler: a clip of at most segments + new_length - 1 frames -> all zeros."""
    assert list(segment_indices(12, 8, 5, "start")) == [0] * 8
    tick = (13 - 5 + 1) / 8
    assert list(segment_indices(13, 8, 5, "start")) == [int(tick / 2 + tick * k) for k in range(8)]
    assert list(segment_indices(12, 8, 5)) == list(tsn_pytorch_test_indices(12, 8, 5))  # TSN keeps the formula


@pytest.mark.parametrize("size", [(7, 5), (240, 320), (97, 31), (120, 160), (240, 80), (1, 1)])
def test_resize_is_pil_bilinear_bit_for_bit(size):
    """One axis at a time, and both (the width shrinking no less than the height: Pillow 13 may
    take the vertical pass first otherwise, see runtime/video.py)."""
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 256, (2, 120, 160, 3)).astype(np.uint8)
    for height, width in (size, (120, size[1]), (size[0], 160)):
        ref = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in x])
        np.testing.assert_array_equal(resize(x, height, width), ref)


@pytest.mark.parametrize("shape,size,expected", [
    ((240, 320), 128, (128, 170)), ((480, 640), 128, (128, 170)), ((480, 640), 256, (256, 341)),
    ((1080, 1920), 256, (256, 455)), ((321, 239), 256, (343, 256)), ((97, 73), 128, (170, 128))])
def test_resize_shorter_is_torchvision_resize_of_pil(shape, size, expected):
    """torchvision's Resize(int): the long side truncated (240x320 -> 128x170, not 171), then
    PIL's bilinear filter; the centre crop then takes torchvision's CenterCrop offsets."""
    from PIL import Image

    x = np.random.default_rng(1).integers(0, 256, (1, *shape, 3)).astype(np.uint8)
    out = resize_shorter(x, size)
    assert out.shape[1:3] == expected
    ref = np.asarray(Image.fromarray(x[0]).resize(expected[::-1], Image.BILINEAR))
    np.testing.assert_array_equal(out[0], ref)
    crop = center_crop(out, 112)
    top, left = int(round((expected[0] - 112) / 2.0)), int(round((expected[1] - 112) / 2.0))
    np.testing.assert_array_equal(crop[0], ref[top:top + 112, left:left + 112])


def test_resize_shorter_and_crop():
    x = np.zeros((1, 120, 160, 3), np.uint8)
    assert resize_shorter(x, 60).shape == (1, 60, 80, 3)
    assert resize_shorter(np.zeros((1, 160, 120, 3), np.uint8), 60).shape == (1, 80, 60, 3)
    y = np.arange(10 * 12).reshape(1, 10, 12, 1)
    np.testing.assert_array_equal(center_crop(y, 4)[0, :, :, 0], y[0, 3:7, 4:8, 0])


def test_preprocess_normalises_rgb_nchw():
    frames = np.full((2, 40, 50, 3), (255, 0, 128), np.uint8)
    pre = {"scale_size": 20, "crop_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.25, 0.5], "input_scale": 1 / 255}
    out = preprocess(frames, pre)
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], -2.0, atol=1e-5)
    bgr = preprocess(frames, {**pre, "channel_order": "BGR"})
    np.testing.assert_allclose(bgr[:, 2], (1.0 - 0.5) / 0.5, atol=1e-5)


def test_video_file_decodes_the_sampled_frames(tmp_path):
    clip = render_clip(2, np.random.default_rng(1), frames=30)
    path = tmp_path / "clip.mp4"
    write_video(path, clip)
    source = open_clip(path)
    assert source.num_frames == 30
    idx = [0, 7, 7, 29]
    frames = source.frames(idx)
    assert frames.shape == (4, 120, 160, 3) and frames.dtype == np.uint8
    # lossy codec: close to the rendered frames, and frame 7 twice is the same frame
    assert np.abs(frames.astype(int) - clip[idx].astype(int)).mean() < 12
    np.testing.assert_array_equal(frames[1], frames[2])


def test_frame_folder(tmp_path):
    import cv2

    clip = render_clip(0, np.random.default_rng(2), frames=5)
    for i, frame in enumerate(clip):
        cv2.imwrite(str(tmp_path / f"img_{i + 1:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    source = open_clip(tmp_path)
    assert source.num_frames == 5
    np.testing.assert_array_equal(source.frames([4, 0]), clip[[4, 0]])


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.mp4", "no such file"),
    (lambda p: (p / "junk.mp4").write_bytes(b"\x00garbage" * 100) and p / "junk.mp4", "cannot decode video"),
    (lambda p: np.save(p / "f.npy", np.zeros((4, 8, 8, 3), np.float32)) or p / "f.npy", "uint8"),
    (lambda p: np.save(p / "g.npy", np.zeros((4, 8, 8, 2), np.uint8)) or p / "g.npy", "T x H x W x 3"),
    (lambda p: np.save(p / "e.npy", np.zeros((0, 8, 8, 3), np.uint8)) or p / "e.npy", "no frames"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no frames"),
])
def test_bad_sources(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        open_clip(make(tmp_path))


def test_grayscale_and_rgba_sources_become_rgb(tmp_path):
    import cv2

    rgb = render_clip(3, np.random.default_rng(4), frames=6)
    gray = rgb.mean(axis=-1).astype(np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    np.save(tmp_path / "gray1.npy", gray[..., None])
    rgba = np.concatenate([rgb, np.full(rgb.shape[:3] + (1,), 128, np.uint8)], axis=-1)
    np.save(tmp_path / "rgba.npy", rgba)
    np.testing.assert_array_equal(open_clip(tmp_path / "gray.npy").frames([2])[0], np.repeat(gray[2, ..., None], 3, -1))
    np.testing.assert_array_equal(open_clip(tmp_path / "gray1.npy").frames([2]), open_clip(tmp_path / "gray.npy").frames([2]))
    np.testing.assert_array_equal(open_clip(tmp_path / "rgba.npy").frames([0, 5]), rgb[[0, 5]])

    folder = tmp_path / "rgba_frames"
    folder.mkdir()
    for i, frame in enumerate(rgba):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(open_clip(folder).frames([1]), rgb[[1]])

    writer = cv2.VideoWriter(str(tmp_path / "gray.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 24, (160, 120), isColor=False)
    for frame in gray:
        writer.write(frame)
    writer.release()
    decoded = open_clip(tmp_path / "gray.avi").frames([0, 3])
    assert decoded.shape == (2, 120, 160, 3)
    assert np.abs(decoded[..., 0].astype(int) - gray[[0, 3]].astype(int)).mean() < 6


def test_zero_length_video(tmp_path):
    import cv2

    path = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (64, 48))
    writer.release()
    with pytest.raises(InputError, match="no decodable frames|cannot decode video"):
        open_clip(path)
