"""Loading plugins, and calling their hooks so that a failing plugin never breaks the caller.

Order (as in tox and pytest): the bundled plugins (the repository's ``plugins/`` folder, installed as
``stratavore.bundled_plugins``), then the ``stratavore`` entry-point group, then
``<config dir>/plugins/*.py``; then ``check_pending`` finds implementations of hooks that do not
exist. Each plugin is registered under a name (the module name for bundled ones, the entry point's
name, the file's stem); ``STRATAVORE_DISABLE_PLUGINS=a,b`` blocks those names before anything of
theirs is imported. A plugin that fails to load is recorded with its error and left out.

Launching must stay fast, so :func:`launch_rewriter` answers "no plugin" without importing pluggy
when there is no plugin file and no installed package declares the entry-point group (the bundled
plugins do not rewrite launches).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .paths import Paths


class _LazyLog:
    """logging costs a few milliseconds to import: a launch without plugins should not pay them."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("stratavore.plugins"), name)


log = _LazyLog()

ENTRY_POINT_GROUP = "stratavore"
DISABLE_ENV = "STRATAVORE_DISABLE_PLUGINS"
BUNDLED = ("ntfy", "telegram", "webhook", "desktop")
BUNDLED_PACKAGE = "stratavore.bundled_plugins"
# hooks no bundled plugin implements: with no other plugin present, these need no plugin machinery
_NOT_BUNDLED_HOOKS = ("rewrite_launch", "register_commands", "on_event")


@dataclass
class PluginInfo:
    name: str
    source: str  # "bundled", "entry point <dist>", "file <path>"
    status: str = "loaded"  # loaded, blocked, error
    error: str | None = None
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plugins_dir(paths: Paths) -> Path:
    return paths.config_dir / "plugins"


def disabled_names(environ: dict[str, str] | None = None) -> set[str]:
    env = os.environ if environ is None else environ
    return {n.strip() for n in env.get(DISABLE_ENV, "").split(",") if n.strip()}


def _plugin_files(paths: Paths) -> list[Path]:
    try:
        return sorted(p for p in plugins_dir(paths).glob("*.py") if not p.name.startswith(("_", ".")))
    except OSError:
        return []


def _has_entry_points(cache: Path | None = None) -> bool:
    """Whether any installed distribution declares the ``stratavore`` entry-point group.

    A scan of ``entry_points.txt`` files on sys.path (two milliseconds, where importing
    importlib.metadata alone costs fifteen), remembered in ``cache`` until a sys.path directory
    changes (installing or removing a package changes its directory's mtime).
    """
    stamp = []
    for entry in sys.path:
        try:
            stamp.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            continue
    if cache is not None:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("stamp") == stamp:
                return bool(saved["found"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    found = _scan_entry_points()
    if cache is not None:
        try:
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"stamp": stamp, "found": found}))
            os.replace(tmp, cache)
        except OSError:
            pass
    return found


def _scan_entry_points() -> bool:
    header = f"[{ENTRY_POINT_GROUP}]"
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as it:
                names = [d.name for d in it if d.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as f:
                    if any(line.strip() == header for line in f):
                        return True
            except OSError:
                continue
    return False


def has_external_plugins(paths: Paths, environ: dict[str, str] | None = None) -> bool:
    """Any plugin besides the bundled ones (cheap: no imports)."""
    blocked = disabled_names(environ)
    if any(p.stem not in blocked for p in _plugin_files(paths)):
        return True
    return _has_entry_points(paths.runtime_dir / "entry-points.json" if paths.runtime_dir.is_dir() else None)


class PluginHost:
    """The loaded plugins and safe ways of calling their hooks."""

    def __init__(self, pm: Any, infos: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self.infos = infos

    @property
    def plugins(self) -> list[PluginInfo]:
        return list(self.infos.values())

    def _impls(self, hook: str) -> list[Any]:
        caller = getattr(self.pm.hook, hook, None)
        # pluggy calls the last registered first; we keep the order plugins were loaded in
        return list(caller.get_hookimpls()) if caller is not None else []

    def _report(self, impl: Any, hook: str, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        info = self.infos.get(impl.plugin_name)
        if info is not None and info.error is None:
            info.error = f"{hook}: {text}"
        log.warning("Warning: plugin %r failed in %s (%s); skipped", impl.plugin_name, hook, text)

    def implementers(self, hook: str) -> list[str]:
        return [impl.plugin_name for impl in self._impls(hook)]

    def call_one(self, plugin_name: str, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of ``hook``; exceptions propagate to the caller."""
        for impl in self._impls(hook):
            if impl.plugin_name == plugin_name:
                return impl.function(*[kwargs[a] for a in impl.argnames])
        raise LookupError(f"plugin {plugin_name!r} does not implement {hook}")

    def collect(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Every implementation's answer (None answers left out), failures reported and skipped."""
        answers = []
        for impl in self._impls(hook):
            try:
                value = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as e:  # noqa: BLE001 - a plugin must not break its caller
                self._report(impl, hook, e)
                continue
            if value is not None:
                answers.append((impl.plugin_name, value))
        return answers

    def rewrite_launch(self, agent: str, command: list[str], env: dict[str, str]) -> list[str]:
        """The command after every plugin's ``rewrite_launch``, chained in load order."""
        current = list(command)
        for impl in self._impls("rewrite_launch"):
            args = {"agent": agent, "command": list(current), "env": dict(env)}
            try:
                value = impl.function(*[args[a] for a in impl.argnames])
            except Exception as e:  # noqa: BLE001
                self._report(impl, "rewrite_launch", e)
                continue
            if value is None:
                continue
            if not isinstance(value, list | tuple) or not value or not all(isinstance(a, str) and a for a in value):
                self._report(impl, "rewrite_launch", TypeError(f"returned {value!r}, not a non-empty list of strings"))
                continue
            current = list(value)
        return current

    def channel_kinds(self) -> dict[str, type]:
        from .notify import Channel

        kinds: dict[str, type] = {}
        for plugin_name, value in self.collect("notification_channels"):
            for kind in value if isinstance(value, list | tuple) else [value]:
                if not (isinstance(kind, type) and issubclass(kind, Channel) and kind.kind):
                    log.warning("Warning: plugin %r offered %r, not a notify.Channel subclass; skipped", plugin_name, kind)
                    continue
                kinds.setdefault(kind.kind, kind)
        return kinds

    def register_commands(self, group: Any) -> None:
        import click

        for impl in self._impls("register_commands"):
            scratch = click.Group(name="scratch")
            try:
                impl.function(*[{"cli": scratch}[a] for a in impl.argnames])
            except Exception as e:  # noqa: BLE001
                self._report(impl, "register_commands", e)
                continue
            for name, command in scratch.commands.items():
                if name in group.commands or name in getattr(group, "reserved_names", ()):
                    self._report(impl, "register_commands", ValueError(f"the command name {name!r} is taken"))
                    continue
                group.add_command(command, name)


def _ensure_bundled_package() -> None:
    """Make ``stratavore.bundled_plugins`` importable in a source checkout that was not installed."""
    import importlib
    import types

    try:
        importlib.import_module(BUNDLED_PACKAGE)
        return
    except ModuleNotFoundError as e:
        if e.name != BUNDLED_PACKAGE:
            raise
    frozen = getattr(sys, "_MEIPASS", None)  # a PyInstaller executable ships them as data files
    folder = Path(frozen) / "stratavore_bundled_plugins" if frozen else Path(__file__).resolve().parent.parent / "plugins"
    package = types.ModuleType(BUNDLED_PACKAGE)
    package.__path__ = [str(folder)]
    package.__package__ = BUNDLED_PACKAGE
    sys.modules[BUNDLED_PACKAGE] = package


def _short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".rstrip(": ")


def load(paths: Paths, environ: dict[str, str] | None = None, *, bundled: bool = True, external: bool = True) -> PluginHost:
    """Load every plugin that is not blocked; never raises because of a plugin."""
    import importlib

    import pluggy

    from . import hookspecs

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = disabled_names(environ)
    infos: dict[str, PluginInfo] = {}

    def add(name: str, source: str, loader: Callable[[], Any]) -> None:
        if name in infos:
            infos[f"{name} ({source})"] = PluginInfo(name, source, "error", f"the name {name!r} is already taken by {infos[name].source}")
            return
        info = infos[name] = PluginInfo(name, source)
        if name in blocked:
            pm.set_blocked(name)
            info.status = "blocked"
            info.error = f"blocked by {DISABLE_ENV}"
            return
        try:
            plugin = loader()
            pm.register(plugin, name=name)
        except Exception as e:  # noqa: BLE001 - an import error or a bad plugin is reported, not raised
            info.status, info.error = "error", _short_error(e)
            log.warning("Warning: plugin %r (%s) could not be loaded: %s", name, source, info.error)

    if bundled:
        _ensure_bundled_package()
        for name in BUNDLED:
            add(name, "bundled", lambda name=name: importlib.import_module(f"{BUNDLED_PACKAGE}.{name}"))
    if external:
        if _has_entry_points():
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                dist = getattr(ep, "dist", None)
                add(ep.name, f"entry point {dist.name if dist else ep.value}", ep.load)
        for path in _plugin_files(paths):
            add(path.stem, f"file {path}", lambda path=path: _load_file(path))
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as e:
            name = pm.get_name(e.plugin)
            pm.unregister(e.plugin)
            if name in infos:
                infos[name].status, infos[name].error = "error", str(e)
    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None and info.status == "loaded":
            info.hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
    return PluginHost(pm, infos)


def _load_file(path: Path) -> Any:
    import importlib.util

    module_name = f"stratavore_user_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def launch_rewriter(paths: Paths, environ: dict[str, str] | None = None) -> Callable[[str, list[str], dict[str, str]], list[str]] | None:
    """What rewrites launch commands, or None when no plugin does (without importing pluggy then)."""
    if not has_external_plugins(paths, environ):
        return None
    try:
        host = load(paths, environ, bundled=False)
    except Exception as e:  # noqa: BLE001 - plugins must never stop a launch
        log.warning("Warning: plugins could not be loaded (%s); launching without them", _short_error(e))
        return None
    if not host.implementers("rewrite_launch"):
        return None
    return host.rewrite_launch
