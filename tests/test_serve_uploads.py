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
