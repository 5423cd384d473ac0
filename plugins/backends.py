"""Built-in backends, registered through the same hook third-party backends use."""

from edgert.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgert.runtime.backends.tensorrt import TensorRTBackend
from edgert.runtime.hookspecs import hookimpl


@hookimpl
def edgert_register_backends():
    return [OnnxRuntimeBackend, TensorRTBackend]
