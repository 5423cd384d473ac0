"""edgert's runtime: bundles, backends, the plugin host. Never imports torch."""

from .bundle import Bundle
from .errors import BundleError, EdgertError, InputError, PluginError
from .model import Model, load

__all__ = ["Bundle", "BundleError", "EdgertError", "InputError", "PluginError", "Model", "load"]
