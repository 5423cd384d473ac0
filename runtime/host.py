"""The plugin host: finds plugins through entry points and collects what they register.

Discovery is pluggy's, with one difference: pluggy's ``load_setuptools_entrypoints`` stops at
the first plugin that fails to import, and a hook call stops at the first implementation
that raises. Here each plugin is imported and each implementation called on its own, so a
broken third-party plugin is reported (name, error) and skipped while the rest keep working:
an import that raises anything (``SystemExit`` too; only Ctrl-C goes through), a hook that
raises, a name two plugins claim (the later one's entry is disabled with a warning naming both;
asking for that name is an error naming both). At run time a detector, decoder family or
strategy that raises anything but an :class:`EdgertError` becomes one :class:`PluginError`
naming the plugin, the thing and the method.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import EdgertError, PluginError, one_line

ENTRY_POINT_GROUP = "edgert"
KINDS = {
    "detector": "edgert_register_detectors",
    "decoder": "edgert_register_decoders",
    "strategy": "edgert_register_strategies",
    "head": "edgert_register_heads",
    "backend": "edgert_register_backends",
}

PLURAL = {"strategy": "strategies"}


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin came from: entry-point name, distribution and its version."""

    name: str
    package: str
    version: str


@dataclass(frozen=True)
class Registered:
    """One thing a plugin registered: a detector, a decoder family, a decoding strategy or a backend class."""

    kind: str
    name: str
    obj: Any
    plugin: PluginInfo


class Guarded:
    """A plugin's object as the runtime sees it: its methods' unexpected exceptions (and those of
    the iterators they return) become one PluginError line naming the plugin."""

    def __init__(self, obj, where: str):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_where", where)

    def __getattr__(self, attr):
        value = getattr(self._obj, attr)
        if not callable(value) or isinstance(value, type):
            return value
        where = f"{self._where}.{attr}"

        def call(*args, **kwargs):
            result = _guard(where, value, *args, **kwargs)
            return _GuardedIterator(result, where) if hasattr(result, "__next__") else result

        return call

    def __setattr__(self, attr, value):
        setattr(self._obj, attr, value)


class _GuardedIterator:
    def __init__(self, it, where: str):
        self._it, self._where = it, where

    def __iter__(self):
        return self

    def __next__(self):
        return _guard(self._where, self._it.__next__)

    def close(self):
        close = getattr(self._it, "close", None)
        if close is not None:
            _guard(self._where, close)


def _guard(where: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (EdgertError, StopIteration, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as err:
        raise PluginError(f"{where} failed: {one_line(err)}") from err


@dataclass
class Host:
    pm: pluggy.PluginManager
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    registry: dict[str, dict[str, Registered]] = field(default_factory=dict)
    conflicts: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> the line naming both

    def get(self, kind: str, name: str) -> Registered:
        items = self.registry[kind]
        if (kind, name) in self.conflicts:
            raise PluginError(self.conflicts[kind, name])
        if name not in items:
            known = ", ".join(sorted(items)) or "none"
            raise PluginError(f"no {kind} named {name!r} (installed {PLURAL.get(kind, kind + 's')}: {known})")
        found = items[name]
        if kind == "backend":  # classes: instantiated by the runtime, which catches what they raise
            return found
        where = f"plugin {found.plugin.name!r} ({found.plugin.package}): {kind} {name!r}"
        return Registered(kind, name, Guarded(found.obj, where), found.plugin)

    def all(self) -> list[Registered]:
        return [r for kind in KINDS for r in sorted(self.registry[kind].values(), key=lambda r: r.name)]


def _warn(msg: str) -> None:
    print(f"edgert: warning: {msg}", file=sys.stderr)


def build_host(extra_plugins: dict[str, object] | None = None) -> Host:
    """Load every ``edgert`` entry point (plus ``extra_plugins``, name -> module/object, which
    tests and embedding apps use) and collect detectors, decoders, strategies and backends."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = Host(pm=pm, registry={kind: {} for kind in KINDS})

    sources: list[tuple[PluginInfo, Any]] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?")
        try:
            sources.append((info, ep.load()))
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a third party's import error, even sys.exit(), must not stop the host
            host.failures.append((ep.name, one_line(err)))
            _warn(f"plugin {ep.name!r} ({info.package}) failed to load and was skipped: {one_line(err)}")
    for name, module in (extra_plugins or {}).items():
        sources.append((PluginInfo(name, "<in-process>", ""), module))

    for info, module in sources:
        if info.name in host.plugins:
            continue  # the same entry point seen twice (e.g. an editable and a normal install)
        try:
            pm.register(module, name=info.name)
        except Exception as err:
            host.failures.append((info.name, one_line(err)))
            _warn(f"plugin {info.name!r} ({info.package}) was rejected: {one_line(err)}")
            continue
        host.plugins[info.name] = info

    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = host.plugins[impl.plugin_name]
            try:
                items = list(impl.function() or [])
            except KeyboardInterrupt:
                raise
            except BaseException as err:
                host.failures.append((info.name, one_line(err)))
                _warn(f"plugin {info.name!r} ({info.package}) raised in {hook_name} and was skipped: {one_line(err)}")
                continue
            for obj in items:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    host.failures.append((info.name, f"{kind} without a name: {obj!r}"))
                    _warn(f"plugin {info.name!r} registered a {kind} without a name; skipped")
                    continue
                previous = host.registry[kind].get(name)
                if previous is not None:  # neither is trusted with the name; every other name keeps working
                    line = (f"{kind} name {name!r} is claimed by two plugins: {previous.plugin.name!r} "
                            f"({previous.plugin.package}) and {info.name!r} ({info.package}); uninstall one")
                    host.conflicts[kind, name] = line
                    host.failures.append((info.name, line))
                    _warn(f"{line}; {info.name!r}'s {kind} {name!r} is disabled")
                    continue
                host.registry[kind][name] = Registered(kind, name, obj, info)
    return host


_HOST: Host | None = None


def get_host() -> Host:
    """The process-wide host, built on first use."""
    global _HOST
    if _HOST is None:
        _HOST = build_host()
    return _HOST
