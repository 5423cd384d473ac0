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

* A plugin module that raises on import (anything, ``sys.exit()`` included; only Ctrl-C goes
  through), or a hook that raises, is reported on stderr with the plugin's name and error and
  skipped; the host goes on with the rest.
* Names are global per kind: when two plugins register the same detector, decoder, strategy or
  backend name, the later one's entry is disabled with a warning naming both, every other name
  keeps working, and asking for that name is an error naming both.
* At run time, a method of your detector, decoder family or strategy (and an iterator it returns)
  that raises anything but an ``EdgertError`` reaches the user as one ``PluginError`` line
  naming your plugin, the thing and the method. Raise ``EdgertError`` (or ``InputError``,
  ``BundleError``) with a complete one-line message for what is the user's fault.
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
    """Return an iterable of LLM decoder families (objects), e.g. the built-in ``llama``.

    A decoder family turns a checkpoint into a decoder bundle: ``name`` (``edgert export
    <name>``), ``description``, ``paper``, ``options`` (``--opt key=value``, a dict of
    :class:`edgert.runtime.detector.Option`), ``resolve_options(given)`` and
    ``export(registered, out, options, checkpoint, precision, tolerance, force, seed, backend)``
    which writes the bundle (import torch inside it). ``backend`` is ``"onnx"`` (standard ops,
    for ONNX Runtime) or ``"trt"`` (edgert's TensorRT plugin ops, ``edgert export --backend
    trt``); a family without a TensorRT flavour raises EdgertError for ``"trt"``. For
    ``precision`` ``"int8"`` / ``"int4"`` the driver also passes ``quantization`` (the resolved
    ``--quant`` knobs, :data:`edgert.exporters.precision.DECODER_WEIGHTS`) and ``calibration``
    (``--calibration``, text or None) as keywords; a family that does not quantize raises
    EdgertError for them (:func:`edgert.exporters.llm.export.export_decoder` does it all). The ONNX
    flavour's decoder graph must have the I/O of :func:`edgert.exporters.llm.export.decoder_graph`
    and a ``decoder`` manifest section, so that every decoding strategy runs on it unchanged.
    """


@hookspec
def edgert_register_strategies():
    """Return an iterable of decoding strategies (``edgert generate --strategy <name>``).

    A strategy has a unique ``name``, a ``description``, optionally ``options`` (a dict of
    :class:`edgert.runtime.detector.Option`, set with ``--strategy-opt key=value``) and
    ``decode(d)``: a Python generator that proposes and verifies tokens and yields each list of
    tokens it has decided, in order. ``d`` is a :class:`edgert.runtime.llm.generator.Decoding`:

    * ``d.prefill()`` runs the prompt and returns the first logits; ``d.step(token)`` runs one
      token; ``d.sample(logits)`` applies the user's sampling settings;
    * ``d.verify(tree, tokens, mode=None, draft_probs=None)`` runs a speculation tree (node 0
      is the next token, already chosen; a linear draft is ``Tree.chain(n)``) in one pass,
      applies the verification op (greedy, typical or speculative sampling), compacts the KV
      cache to the accepted path and returns it with the bonus token — the one way to verify,
      so that every strategy is lossless where the op is;
    * ``d.forward(...)``, ``d.cache`` (``truncate``/``keep``) for anything else; ``d.hidden``
      (final hidden states) of the tokens the last pass accepted, for draft heads; ``d.room``
      (positions left in the context); ``d.options``; ``d.resource(key, make)`` for objects
      that outlive one generation (a draft model's session);
    * ``d.tokens`` is the prompt plus everything accepted so far; ``d.stats`` the statistics.

    The Generator handles stop conditions and text: it stops consuming (and closes the
    generator) at eos, a stop string, max new tokens or the context, so ``decode`` simply loops.
    The built-in ``ar`` (edgert.plugins.ar) and ``lookup`` strategies are the models to copy.
    Strategies run on numpy and the backend only, never torch.
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
