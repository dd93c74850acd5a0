"""Finding, loading and checking plugins.

Plugins are registered under the setuptools entry-point group ``didmos``; the entry-point name is the
plugin's name. ``DIDMOS_DISABLE_PLUGINS=a,b`` blocks plugins by name; ``DIDMOS_TRACE_PLUGINS=1`` logs
every hook call with its arguments and results (logger ``didmos.plugins``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from didmos_host import builtin, hookspecs
from didmos_host.errors import PluginError

ENTRY_POINT_GROUP = "didmos"
HOST_PLUGIN_NAME = "didmos_host"

log = logging.getLogger("didmos.plugins")


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").replace(";", ",").split(",") if name.strip()]


def create_plugin_manager(
    extra_plugins: Iterable[Any] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """Build the plugin manager: hookspecs, the host's built-ins, installed plugins, ``extra_plugins``.

    ``extra_plugins`` are objects or modules registered after the installed ones (tests use this to add
    a throwaway plugin). Raises :class:`PluginError` naming the plugin when one fails to import or
    implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.didmos_distributions = {}  # plugin name -> importlib.metadata.Distribution, for `didmos plugins`
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name=HOST_PLUGIN_NAME)
    for name in _names(os.environ.get("DIDMOS_DISABLE_PLUGINS")):
        if name == HOST_PLUGIN_NAME:
            raise PluginError("DIDMOS_DISABLE_PLUGINS names didmos_host, which cannot be disabled: "
                              "override its hooks with tryfirst implementations instead")
        pm.set_blocked(name)
    if load_entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin, name=_label(pm, plugin))
    _check_hooks(pm)
    if os.environ.get("DIDMOS_TRACE_PLUGINS", "").lower() in ("1", "true", "yes"):
        enable_tracing(pm)
    return pm


def _label(pm: pluggy.PluginManager, plugin: Any) -> str:
    """A readable name for a plugin registered in-process: its module or class name."""
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return name if pm.get_plugin(name) is None else f"{name}-{id(plugin)}"


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure: name the plugin, keep the cause
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        try:
            pm.register(plugin, name=ep.name)
        except ValueError as exc:
            raise PluginError(f"plugin {ep.name!r} cannot be registered: {exc}") from exc
        pm.didmos_distributions[ep.name] = ep.dist


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """Fail on hook implementations that match no hookspec, naming the plugin and the hook.

    pluggy's own ``check_pending`` would catch them too, but its message names neither clearly.
    """
    for hook_name, caller in vars(pm.hook).items():
        if caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            known = ", ".join(sorted(n for n, c in vars(pm.hook).items() if c.spec is not None))
            raise PluginError(
                f"plugin {impl.plugin_name!r} implements unknown hook {hook_name!r}; "
                f"didmos hooks are: {known}"
            )
    pm.check_pending()


def enable_tracing(pm: pluggy.PluginManager) -> None:
    """Log every hook call, its implementations and results to the ``didmos.plugins`` logger."""
    pm.trace.root.setwriter(lambda message: log.info(message.rstrip()))
    pm.enable_tracing()


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    """Names of the registered plugins, the host first."""
    return [name for name, plugin in pm.list_name_plugin() if plugin is not None]  # None: blocked


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One record per plugin: name, distribution, version and the hooks it implements."""
    from didmos_host import __version__

    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked by DIDMOS_DISABLE_PLUGINS
            continue
        dist = pm.didmos_distributions.get(name)
        if dist is not None:
            distribution, version = dist.metadata["Name"], dist.version
        elif name == HOST_PLUGIN_NAME:
            distribution, version = "didmos-host", __version__
        else:  # registered in-process (tests), not installed
            distribution, version = None, None
        hooks = sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []))
        rows.append({"name": name, "distribution": distribution, "version": version, "hooks": hooks})
    return rows


def collect_named(results: Iterable[Iterable[Any] | None], kind: str) -> dict[str, Any]:
    """Flatten the lists that a registering hook returned and index them by ``name``.

    Two records with the same name are an error: the host cannot know which one was meant.
    """
    found: dict[str, Any] = {}
    for records in results:
        for record in records or ():
            name = getattr(record, "name", None)
            if name in found:
                raise PluginError(f"two plugins register a {kind} named {name!r}; rename one of them")
            found[name] = record
    return found
