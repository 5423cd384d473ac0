"""Uploaded clips, frames and features: recognised by their bytes, never by a name the client
chose, and written only inside a private temporary folder that edgert made (and removes).

A clip upload is one of:

* an ``.npy`` array (``T x H x W x 3`` uint8; no pickles: the runtime's loader refuses them);
* a frame archive, zip or tar, of image files: only regular members with an image extension are
  read, each into a file whose name is made here (its order is the members' names sorted), so a
  member named ``../../x`` or a link writes nothing outside the folder; the count and the
  unpacked size are bounded before anything is unpacked;
* one image (JPEG, PNG, BMP, WebP): a clip of one frame;
* anything else is tried as a video, and refused (415) when OpenCV cannot decode it.

What an upload decodes to is bounded too, as an ``.npy`` is by its bytes: its frames may add
up to ``UNPACKED_FACTOR`` times the upload limit in RGB pixels, counted from the container's or
each image's header before each frame is decoded (413 past it; :mod:`edgert.runtime.budget`).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np

from edgert.runtime.budget import OverBudget, decode_budget
from edgert.runtime.errors import DecodeError, InputError, first_line
from edgert.runtime.inputs import load_npy
from edgert.runtime.video import IMAGE_EXTENSIONS

from .errors import PayloadTooLarge, UnsupportedMedia

MAX_FRAMES = 100_000
UNPACKED_FACTOR = 4  # an archive may unpack to this many times the upload limit (images barely compress)
WHAT = "a video, a frame archive (zip or tar of images), an image or an .npy clip"


def image_suffix(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return None


def _is_tar(data: bytes) -> bool:
    return len(data) > 262 and data[257:262] == b"ustar"


def _members(data: bytes, limit: int) -> list[tuple[str, bytes]]:
    """(member name, bytes) of an archive's image files, bounded in count and unpacked size."""
    out: list[tuple[str, bytes]] = []
    total = 0

    def take(name: str, size: int, read):
        nonlocal total
        if PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
            return
        if len(out) >= MAX_FRAMES:
            raise PayloadTooLarge(f"frame archive holds more than {MAX_FRAMES} images")
        total += size
        if total > limit:
            raise PayloadTooLarge(f"frame archive unpacks to more than {limit} bytes")
        out.append((name, read()))

    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        take(info.filename, info.file_size, lambda info=info: archive.read(info)[:info.file_size])
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
                for member in archive:
                    if member.isreg():  # links, devices, folders: never read
                        take(member.name, member.size, lambda member=member: archive.extractfile(member).read(member.size))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise InputError(f"upload: a damaged frame archive ({type(err).__name__})") from None
    if not out:
        raise InputError(f"upload: the archive holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(out)


def write_clip(data: bytes, folder: Path, limit: int) -> Path:
    """The upload as a source the runtime opens (a file or a frame folder) inside ``folder``."""
    if not data:
        raise InputError(f"upload: empty body; send {WHAT}")
    if data[:6] == b"\x93NUMPY":
        path = folder / "clip.npy"
        path.write_bytes(data)
        return path
    if data[:4] == b"PK\x03\x04" or _is_tar(data):
        frames = folder / "frames"
        frames.mkdir()
        for index, (name, body) in enumerate(_members(data, limit * UNPACKED_FACTOR)):
            (frames / f"{index:06d}{PurePosixPath(name).suffix.lower()}").write_bytes(body)
        return frames
    suffix = image_suffix(data)
    if suffix:
        frames = folder / "frames"
        frames.mkdir()
        (frames / f"000000{suffix}").write_bytes(data)
        return frames
    path = folder / "clip.video"
    path.write_bytes(data)
    return path


@contextmanager
def clip_source(data: bytes, limit: int):
    """A temporary source path for an uploaded clip; the folder goes when the block ends. A video
    OpenCV cannot decode becomes an :class:`UnsupportedMedia` error."""
    folder = Path(tempfile.mkdtemp(prefix="edgert-upload-"))
    try:
        path = write_clip(data, folder, limit)
        try:
            with decode_budget(limit * UNPACKED_FACTOR // 3, "upload"):
                yield path
        except DecodeError:
            raise UnsupportedMedia(f"upload ({len(data)} bytes): not {WHAT}") from None
        except OverBudget as err:
            raise PayloadTooLarge(first_line(err).replace(str(folder) + "/", "")) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read_features(data: bytes, feature_dim: int) -> np.ndarray:
    """Feature vectors for a feature stream: an ``.npy`` of shape (D,) or (N, D), or JSON
    ``{"features": [[...], ...]}`` (or one list); float32 (N, D)."""
    if data[:6] == b"\x93NUMPY":
        folder = Path(tempfile.mkdtemp(prefix="edgert-upload-"))
        try:
            (folder / "features.npy").write_bytes(data)
            array = load_npy(folder / "features.npy", "features")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        try:
            body = json.loads(data)
        except RecursionError:
            raise InputError("features: JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError):
            raise UnsupportedMedia("features: expected an .npy array or JSON {\"features\": [[...], ...]}") from None
        body = body.get("features") if isinstance(body, dict) else body
        try:
            array = np.asarray(body, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError("features: expected a list of numbers or of lists of numbers") from None
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.dtype.kind not in "fiu" or array.shape[0] == 0:
        raise InputError(f"features: expected (N, {feature_dim}) numbers, given {array.dtype} {list(array.shape)}")
    if array.shape[1] != feature_dim:
        raise InputError(f"features: dimension {array.shape[1]}, the model expects {feature_dim}")
    if not np.isfinite(array).all():
        raise InputError("features: NaN or infinite values")
    return array.astype(np.float32)
