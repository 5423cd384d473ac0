"""The one exception type users see.

Everything that is the user's problem (a missing file, a tampered bundle, an input of the
wrong shape, a plugin that failed) raises :class:`EdgertError` with a one-line message that
names the thing at fault. The CLI prints that line and exits non-zero, without a traceback;
anything else escaping is a bug and keeps its traceback.
"""


class EdgertError(Exception):
    """A user-facing error; ``str(err)`` is a complete, single-line explanation."""


class BundleError(EdgertError):
    """A bundle directory cannot be trusted or read (missing file, bad hash, bad manifest)."""


class InputError(EdgertError):
    """An input does not match what the graph declares (name, dtype, rank, static dim)."""


class DecodeError(InputError):
    """A source is not a video OpenCV can decode (not a video at all, or a codec it lacks)."""


class PluginError(EdgertError):
    """A plugin could not be loaded, or two plugins claim the same name."""


def first_line(err: BaseException) -> str:
    """The first non-blank line of ``err``'s message, or its type's name when it has none: the
    one place that turns a library's (often multi-line, sometimes empty) message into a line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def one_line(err: BaseException) -> str:
    """``Type: first line`` of ``err`` (for errors whose type says something, a plugin's bug)."""
    text = first_line(err)
    return type(err).__name__ if text == type(err).__name__ else f"{type(err).__name__}: {text}"
