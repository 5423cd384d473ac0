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
* Names are global per kind: when two plugins register the same detector, decoder, strategy,
  head or backend name, the later one's entry is disabled with a warning naming both, every other name
  keeps working, and asking for that name is an error naming both.
* At run time, a method of your detector, decoder family, strategy or head (and an iterator it returns)
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

    A streaming detector declares its graph's state as ``(input, output)`` pairs
    (``GraphSpec.state``) and consumes one item per step (``iter_steps`` / ``prepare_step``);
    the runtime starts the state at zero and feeds it back. Graphs beside ``main`` (an online
    detector's ``offline`` twin over a whole video) get their inputs from ``prepare_graph``.
    ``checkpoint_options`` says what a checkpoint fixes (sizes, class count), read before
    ``build``; ``int8_ops`` limits which operator types int8 quantizes in its graphs;
    options with ``Option(training=True)`` shape training only. ``plugins/oad.py`` is the base
    the feature-based online detectors share.
    """


@hookspec
def edgert_register_decoders():
    """Return an iterable of LLM decoder families (:class:`edgert.runtime.llm.protocols.DecoderFamily`),
    e.g. the built-in ``llama``.

    A decoder family turns a checkpoint into a decoder bundle: ``name`` (``edgert export
    <name>``), ``description``, ``paper``, ``options`` (``--opt key=value``, a dict of
    :class:`edgert.runtime.options.Option`), ``resolve_options(given)`` and ``export(registered,
    out, request)``, which writes the bundle (import torch inside it). ``request`` is an
    :class:`edgert.exporters.llm.export.ExportRequest`: checkpoint, options, precision,
    tolerance, force, seed, ``flavour`` (``"onnx"``: standard ops for ONNX Runtime; ``"trt"``:
    edgert's TensorRT plugin ops, ``edgert export --flavour trt``; a family without that
    flavour raises EdgertError), and for ``int8`` / ``int4`` the resolved ``quantization`` knobs
    and the ``calibration`` text. :func:`edgert.exporters.llm.export.export_decoder` does all of
    it for a family that gives it a PyTorch module of the contract.

    The contract (:mod:`edgert.runtime.llm.contract`): the decoder graph's I/O (names, dtypes,
    dims, cache geometry) and the manifest's ``decoder`` section, so that every decoding strategy
    and every head runs on the bundle unchanged.
    """


@hookspec
def edgert_register_strategies():
    """Return an iterable of decoding strategies (:class:`edgert.runtime.llm.protocols.Strategy`;
    ``edgert generate --strategy <name>``).

    A strategy has a unique ``name``, a ``description``, optionally ``options`` (a dict of
    :class:`edgert.runtime.options.Option`, set with ``--strategy-opt key=value``; an option
    whose value names a bundle or a file says so with ``names="bundle"`` / ``names="file"``,
    since ``edgert serve`` never lets a client give such a value itself) and ``decode(d)``: a Python generator that proposes and verifies tokens and yields each list of
    tokens it has decided, in order. ``d`` is a :class:`edgert.runtime.llm.generator.Decoding`,
    the whole surface a strategy needs:

    * ``d.prefill()`` runs the prompt and returns the first logits; ``d.step(token)`` runs one
      token; ``d.sample(logits)`` applies the user's sampling settings;
      ``root = yield from d.plain_step(root)`` emits ``root`` and takes one ordinary step (what a
      strategy does when its proposal no longer fits the context);
      ``root = yield from d.verify_chain(root, draft)`` verifies a linear draft, emits what was
      accepted and returns the bonus token (an empty draft is a plain step);
    * ``d.verify(tree, tokens, mode=None, draft_probs=None)`` runs a speculation tree (node 0
      is the next token, already chosen; a linear draft is ``Tree.chain(n)``) in one pass,
      applies the verification op (greedy, typical or speculative sampling), compacts the KV
      cache to the accepted path and returns it with the bonus token — the one way to verify,
      so that every strategy is lossless where the op is (it puts a node's children in the
      order you rank them: the first child of each node, your best guess, runs as an exact
      causal prefix; a path off it may be run again as a chain on int8 bundles);
    * ``d.head(name)`` opens a speculative head of the bundle (see ``edgert_register_heads``)
      once per generator, or says in one line that the bundle has none; ``d.session.open_graph(name)``
      opens any contract graph of the bundle as a :class:`DecoderSession`;
      ``d.open_bundle(path)`` another decoder bundle of the same tokenizer (a draft model);
    * ``d.forward(...)``, ``d.cache`` (``truncate``/``keep``) for anything else; ``d.hidden``
      (final hidden states) of the tokens the last pass accepted, for draft heads, and ``d.extra``
      the decoder's extra outputs for them (the hidden states a head tapped); ``d.room``
      (positions left in the context); ``d.context``, ``d.vocab_size``; ``d.options``;
      ``d.resource(key, make)`` for objects that outlive one generation;
    * ``d.tokens`` is the prompt plus everything accepted so far; ``d.stats`` the statistics.

    The Generator handles stop conditions and text: it stops consuming (and closes the
    generator) at eos, a stop string, max new tokens or the context, so ``decode`` simply loops.
    The built-in ``ar`` (edgert.plugins.ar) and ``lookup`` strategies are the models to copy.
    Strategies run on numpy and the backend only, never torch.
    """


@hookspec
def edgert_register_heads():
    """Return an iterable of speculative head families (:class:`edgert.runtime.llm.protocols.Head`):
    graphs a decoder bundle carries beside its decoder to propose tokens. The built-in ``medusa``
    and ``mtp`` are registered through this hook (edgert.plugins.medusa, edgert.plugins.mtp).

    A head's ``name`` is its one word everywhere: ``edgert export <family> --opt <name>=FILE``
    adds it to a bundle, the manifest lists it at ``decoder.heads.<name>``, a strategy opens it
    with ``d.head(<name>)``, and ``edgert train <name>`` trains one when the head offers
    ``trainee`` (with ``train_options``). Three sides, each lazy about its imports:

    * taps (optional), ``taps(config)``: the layers whose input hidden states the head reads
      from the target; the decoder graph then also returns them (``hidden_states.{i}``, see
      :mod:`edgert.runtime.llm.contract`) and a strategy finds those of the accepted tokens in
      ``d.extra``. Bundles without such a head pay nothing.
    * export, ``plan(ctx, source)``: from an :class:`edgert.exporters.llm.plan.ExportContext`
      (config, geometry, fp32 reference and exported decoder modules, flavour, precision,
      parity helpers) and the file the user gave, return the head's
      :class:`~edgert.exporters.llm.plan.GraphJob` list and its manifest entry (at least
      ``{"graph": name}``). The exporter runs the jobs with the decoder's (export, parity check,
      quantization at ``--precision int8|int4``) and writes the entry. ``flavours`` says which
      graph flavours it can join (a head without ``"trt"`` is refused in one line there).
    * train, ``trainee(model, options)``: the module to train on the frozen base model, its
      losses and its writer (:class:`edgert.exporters.llm.train.Trainee`); edgert's loop does
      the rest (self-distillation data, AdamW, resumable safetensors state, progress bar).
    * run, ``open(target, entry)``: the object a strategy drives, its graphs opened on the
      target decoder session's backend (numpy and the backend only, never torch).

    A head and the strategy that uses it usually ship in one plugin (see
    tests/example_head_plugin for a complete third-party one).
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
