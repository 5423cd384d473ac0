"""Uploads to the server are hostile input: recognised by their bytes, unpacked only inside a
folder edgert made, bounded, and the folder gone afterwards (no Ray needed)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgert.runtime.errors import InputError
from edgert.runtime.video import iter_frames
from edgert.serve.errors import Failure, PayloadTooLarge, SessionLost, UnsupportedMedia, error_body, user_errors
from edgert.serve.uploads import clip_source, read_features

cv2 = pytest.importorskip("cv2")


def png(value: int) -> bytes:
    return cv2.imencode(".png", np.full((6, 8, 3), value, np.uint8))[1].tobytes()


def test_zip_of_frames_is_unpacked_in_order_under_names_edgert_chose(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escape/f2.png", png(20))  # a zip-slip name: its bytes are used, never its name
        archive.writestr("clip/f1.png", png(10))
        archive.writestr("notes.txt", b"ignored")
    before = set(Path(tempfile.gettempdir()).glob("edgert-upload-*"))
    with clip_source(buffer.getvalue(), 1 << 20) as source:
        assert source.is_dir() and sorted(p.name for p in source.iterdir()) == ["000000.png", "000001.png"]
        frames = list(iter_frames(source))
    # sorted by member name: "../../escape/f2.png" < "clip/f1.png"
    assert [int(f[0, 0, 0]) for f in frames] == [20, 10]
    assert set(Path(tempfile.gettempdir()).glob("edgert-upload-*")) == before  # the folder is gone
    assert not (tmp_path.parent / "escape").exists()


def test_tar_links_are_never_followed_and_size_is_bounded():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("secret.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        data = png(5)
        info = tarfile.TarInfo("a.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with clip_source(buffer.getvalue(), 1 << 20) as source:
        assert [p.name for p in source.iterdir()] == ["000000.png"]
    with pytest.raises(PayloadTooLarge, match="unpacks to more than"):
        with clip_source(buffer.getvalue(), 10):
            pass


def test_other_uploads():
    array = np.zeros((2, 4, 4, 3), np.uint8)
    npy = io.BytesIO()
    np.save(npy, array)
    with clip_source(npy.getvalue(), 1 << 20) as source:
        assert source.name == "clip.npy" and len(list(iter_frames(source))) == 2
    with clip_source(png(7), 1 << 20) as source:  # one image: a clip of one frame
        assert [int(f[0, 0, 0]) for f in iter_frames(source)] == [7]
    with pytest.raises(UnsupportedMedia, match="not a video"):
        with clip_source(b"GIF89a not really", 1 << 20) as source:
            list(iter_frames(source))
    with pytest.raises(InputError, match="empty body"):
        with clip_source(b"", 1 << 20):
            pass
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        with clip_source(pickled.getvalue(), 1 << 20) as source:
            list(iter_frames(source))


def test_features():
    assert read_features(json.dumps({"features": [[1, 2, 3]]}).encode(), 3).shape == (1, 3)
    assert read_features(json.dumps([0.5, 1, 2]).encode(), 3).dtype == np.float32
    with pytest.raises(InputError, match="dimension 2, the model expects 3"):
        read_features(json.dumps([[1, 2]]).encode(), 3)
    with pytest.raises(InputError, match="NaN"):
        read_features(b'{"features": [[NaN, 1, 2]]}', 3)
    with pytest.raises(UnsupportedMedia):
        read_features(b"\x00\x01binary", 3)
    with pytest.raises(InputError, match="features: JSON nested too deeply"):
        read_features(b"[" * 100_000 + b"]" * 100_000, 3)


async def _raises(error):
    raise error


def test_user_errors_travel_as_values_and_become_openai_errors():
    import asyncio

    failure = asyncio.run(user_errors(_raises)(SessionLost("stream x: session lost")))
    assert isinstance(failure, Failure)
    status, body = error_body(failure.error)
    assert status == 410 and body["error"]["message"] == "stream x: session lost" and body["error"]["code"] == "session_lost"
    status, body = error_body(RuntimeError("secret internals\nline two"))
    assert status == 500 and "secret" not in body["error"]["message"]
    with pytest.raises(RuntimeError):  # a bug is not turned into a user error
        asyncio.run(user_errors(_raises)(RuntimeError("bug")))


def test_image_sizes_are_read_from_headers():
    from edgert.runtime.budget import image_size

    frame = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    for ext, params in ((".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []),
                        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):
        data = cv2.imencode(ext, frame, params)[1].tobytes()
        assert image_size(data) == (37, 53), (ext, params)
    assert image_size(b"GIF89a....") is None and image_size(b"\x89PNG\r\n\x1a\n") is None  # cut short
    # a JPEG whose frame header follows 80 KB of APP segments (EXIF, ICC) is still read whole
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    app = b"\xff\xe1" + (40002).to_bytes(2, "big") + b"\0" * 40000
    padded = jpeg[:2] + app + app + jpeg[2:]
    assert image_size(memoryview(padded)) == (37, 53)
    with clip_source(padded, 1 << 20) as source:  # under the bound, where a size no header states is refused
        assert [f.shape for f in iter_frames(source)] == [(37, 53, 3)]


def test_uploads_are_bounded_by_what_they_decode_to():
    """A few KiB of PNGs or video that decode to far more pixels than the upload limit allows
    as an .npy are refused (413) from their headers, before the frames past the bound decode;
    a local clip, without a bound, decodes whole."""
    big = cv2.imencode(".png", np.zeros((4096, 4096, 3), np.uint8))[1].tobytes()  # 48 MiB of pixels in ~50 KiB
    def zipped(count):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for i in range(count):
                archive.writestr(f"{i:03d}.png", big)
        return buffer.getvalue()

    data = zipped(40)
    assert len(data) < 1 << 20
    decoded = []
    with pytest.raises(PayloadTooLarge, match=r"upload: decodes to more than \d+ pixels .* at frames/000000.png, a 4096x4096"):
        with clip_source(data, 8 << 20) as source:  # 8 MiB upload limit: 32 MiB of pixels
            for frame in iter_frames(source):
                decoded.append(frame.shape)
    assert len(decoded) <= 1  # 4096 x 4096 x 3 = 48 MiB: at most one frame before the bound
    with clip_source(zipped(2), 64 << 20) as source:  # the default limit: 85 MiB of pixels, both frames
        assert sum(1 for _ in iter_frames(source)) == 2
    # a video: its container states the frame size, each frame is charged before it is decoded
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
        for i in range(120):
            writer.write(np.full((240, 320, 3), i, np.uint8))
        writer.release()
        video = path.read_bytes()
        assert sum(1 for _ in iter_frames(path)) == 120  # the CLI's path: no bound
    with pytest.raises(PayloadTooLarge, match="a 320x240 frame"):
        with clip_source(video, 1 << 20) as source:  # 1 MiB: 4 MiB of pixels, 18 frames of 320x240
            list(iter_frames(source))
    with pytest.raises(PayloadTooLarge, match="a 320x240 frame"):
        with clip_source(video, 1 << 20) as source:
            from edgert.runtime.video import open_clip
            open_clip(source)  # counting the frames decodes them too
    with clip_source(video, 8 << 20) as source:
        assert sum(1 for _ in iter_frames(source)) == 120
    # under a bound, an image whose size no header states is refused before it decodes
    tiff = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("a.png", tiff)
    with pytest.raises(InputError, match="cannot read the image's size from its header"):
        with clip_source(zipped.getvalue(), 1 << 20) as source:
            list(iter_frames(source))
