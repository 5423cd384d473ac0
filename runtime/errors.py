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


class PluginError(EdgertError):
    """A plugin could not be loaded, or two plugins claim the same name."""
