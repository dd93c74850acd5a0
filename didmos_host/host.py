"""The host object: the plugin manager, the settings and what plugins registered, in one place.

One ``Host`` exists per app (``app.extensions["didmos"]``) and per CLI or worker process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pluggy
from dynaconf import Dynaconf

from didmos_host.config import load_settings
from didmos_host.plugins import collect_named, create_plugin_manager
from didmos_host.records import Action, Actor, ResourceType, TaskHandler


class Host:
    """Plugins, settings and registries; the thing every plugin asks for the services of another."""

    def __init__(self, pm: pluggy.PluginManager, settings: Dynaconf, namespaces=()):
        self.pm = pm
        self.hook = pm.hook
        self.settings = settings
        #: ``(plugin name, SettingsNamespace)`` pairs the settings were built from.
        self.namespaces = list(namespaces)
        self.resource_types: dict[str, ResourceType] = collect_named(
            self.hook.didmos_resource_types(), "resource type"
        )
        self.task_handlers: dict[str, TaskHandler] = collect_named(
            self.hook.didmos_task_handlers(), "task handler"
        )
        #: Services plugins offer each other by name (for example ``"directory"``).
        self.services: dict[str, Any] = {}
        self.hook.didmos_services(host=self)

    @classmethod
    def create(
        cls, overrides: Mapping[str, Any] | None = None, *, extra_plugins: Iterable[Any] = (),
        load_entry_points: bool = True,
    ) -> Host:
        """Load plugins and settings. Raises ``PluginError`` or ``ConfigError`` naming the culprit."""
        extra_plugins = tuple(extra_plugins)
        pm = create_plugin_manager(extra_plugins, load_entry_points=load_entry_points)
        settings, namespaces = load_settings(pm, overrides)
        host = cls(pm, settings, namespaces)
        host._origin = (overrides, extra_plugins, load_entry_points)
        return host

    def recreate(self) -> Host:
        """A new host from the same plugins and overrides, with the settings read again (files, the
        central store, the environment): how a running process follows a change of the central settings."""
        overrides, extra_plugins, load_entry_points = getattr(self, "_origin", (None, (), True))
        return type(self).create(overrides, extra_plugins=extra_plugins, load_entry_points=load_entry_points)

    def authorize(self, actor: Actor | None, action: Action) -> bool:
        """Ask every plugin's vote: deny wins, and no vote at all means deny."""
        votes = [vote for vote in self.hook.didmos_authorize(host=self, actor=actor, action=action)
                 if vote is not None]
        return bool(votes) and all(votes)

    def provide(self, name: str, service: Any) -> None:
        """Offer a service to other plugins under ``name`` (one provider per name)."""
        if name in self.services and self.services[name] is not service:
            raise ValueError(f"a service named {name!r} is already provided")
        self.services[name] = service

    def service(self, name: str) -> Any:
        """The service a plugin provided under ``name``; ``LookupError`` says which plugin to install."""
        try:
            return self.services[name]
        except KeyError:
            raise LookupError(
                f"no plugin provides the service {name!r}; is the plugin that offers it installed "
                f"and not disabled (DIDMOS_DISABLE_PLUGINS)?"
            ) from None
