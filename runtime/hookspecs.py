"""Hook specifications: the plugin author's manual.

edgert is a pluggy host for the project name ``edgert``. A plugin is a Python module that
implements some of the hooks below, marked with :data:`hookimpl`, and is published under the
``edgert`` entry-point group of its distribution::

    # pyproject.toml of your package
    [project.entry-points.edgert]
    my_detectors = "my_package.edgert_plugin"

    # my_package/edgert_plugin.py
    from edgert import hookimpl
    from edgert.runtime.detector import Detector

    class MyDetector(Detector):
        name = "my-model"
        ...

    @hookimpl
    def edgert_register_detectors():
        return [MyDetector()]

The built-in plugins (``edgert.plugins.*``) are registered through exactly this mechanism,
in edgert's own pyproject.toml. ``edgert plugins`` lists what the host found.

Rules the host enforces, so one broken plugin never takes the others down:

* A plugin module that raises on import, or a hook that raises, is reported on stderr with the
  plugin's name and error and skipped; the host goes on with the rest.
* Model names are global: two plugins registering the same detector, decoder or backend name
  is an error that names both plugins.
* Plugin modules are imported by every edgert process, including edge apps that only run
  bundles and have no torch installed. Import torch (and anything else heavy) inside the
  methods that need it, never at module level.
"""

from __future__ import annotations

import pluggy

PROJECT = "edgert"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def edgert_register_detectors():
    """Return an iterable of :class:`edgert.runtime.detector.Detector` instances.

    A detector is a video model family: it knows how to build its PyTorch module for export
    (``build``/``graphs``), what preprocessing its inputs need (``preprocessing``), how to turn
    a video, a folder of frames or an array into graph inputs at run time with numpy only
    (``prepare``) and how to present the graph's outputs (``postprocess``). Each instance's
    ``name`` is what users type: ``edgert export <name>``.
    """


@hookspec
def edgert_register_decoders():
    """Return an iterable of decoding strategies for LLM decoder bundles.

    A strategy is an object with a unique ``name`` (``edgert generate --strategy <name>``)
    that drives a decoder bundle to produce tokens: plain autoregressive decoding, or a
    speculative scheme (draft model, Medusa heads, MTP, prompt lookup). Strategies must only
    use the runtime (numpy and the backend), never torch.
    """


@hookspec
def edgert_register_backends():
    """Return an iterable of backend classes (subclasses of
    :class:`edgert.runtime.backends.base.Backend`).

    A backend executes one exported graph. Each class has a unique ``name`` (``--backend``),
    a ``file_key`` naming which file of a bundle graph entry it runs (``"file"`` for ONNX,
    ``"engine"`` for a serialized TensorRT engine), and is constructed as
    ``cls(path, device=..., threads=...)``. Import the backend's library lazily, inside
    ``__init__``, and raise :class:`edgert.runtime.errors.EdgertError` with one line when it is
    missing.
    """
