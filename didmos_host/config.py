"""Settings: dynaconf, layered, validated at start-up.

Lowest to highest:

1. each plugin's defaults, in its own namespace (``didmos_settings`` hook, ``trylast`` built-ins);
2. defaults that customer plugins (``tryfirst``) give for any namespace;
3. settings files: ``/etc/didmos/settings.toml`` when it exists, then the files named in
   ``DIDMOS_SETTINGS_FILES`` (separated by ``:`` or ``,``), later files winning;
   then the central settings document in redis, when ``central.url`` is set (:mod:`didmos_host.central`);
4. environment variables ``DIDMOS_<NAMESPACE>__<KEY>`` (values parsed as TOML: ``8000`` is an int);
5. overrides given to :func:`didmos_host.app.create_app` (tests, the ``dev`` command).

A value of the wrong type, a missing required value or an unknown key inside a known namespace stops
start-up with a :class:`~didmos_host.errors.ConfigError` naming the key and what is expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pluggy
from dynaconf import Dynaconf
from dynaconf.utils.inspect import get_history
from dynaconf.validator import ValidationError

from didmos_host.errors import ConfigError
from didmos_host.records import SettingsNamespace

SYSTEM_SETTINGS_FILE = Path("/etc/didmos/settings.toml")
#: DIDMOS_* environment variables that steer the host itself and are not settings.
CONTROL_VARIABLES = {"SETTINGS_FILES", "DISABLE_PLUGINS", "TRACE_PLUGINS", "SLAPD_LOGLEVEL"}
#: A key whose last part is named like this holds a secret (``bind_password``, ``client_secret``).
_SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|credentials?|private_key)$", re.I)
MASK = "********"


def _check_toml(path: str) -> None:
    import tomllib

    try:
        with open(path, "rb") as handle:
            tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc


def settings_files() -> list[str]:
    """The settings files in the order they are read; each is checked to be readable TOML."""
    files = [str(SYSTEM_SETTINGS_FILE)] if SYSTEM_SETTINGS_FILE.exists() else []
    for name in re.split(r"[:,]", os.environ.get("DIDMOS_SETTINGS_FILES", "")):
        if name.strip():
            path = Path(name.strip())
            if not path.is_file():
                raise ConfigError(f"DIDMOS_SETTINGS_FILES names {name!r}, which is not a readable file")
            files.append(str(path))
    for path in files:
        _check_toml(path)
    return files


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)``. Lists and other values are leaves."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}".lower()
        if isinstance(value, Mapping) and value:
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def namespace_records(pm: pluggy.PluginManager) -> list[tuple[str, SettingsNamespace]]:
    """``(plugin name, record)`` pairs in call order: ``tryfirst`` implementations first."""
    pairs = []
    for impl in reversed(pm.hook.didmos_settings.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        for record in impl.function() or ():
            pairs.append((impl.plugin_name, record))
    return pairs


def load_settings(
    pm: pluggy.PluginManager, overrides: Mapping[str, Any] | None = None
) -> tuple[Dynaconf, list[tuple[str, SettingsNamespace]]]:
    """Build and validate the effective settings; also return the namespace records they came from.

    Raises :class:`ConfigError` on bad input.
    """
    from didmos_host import central

    try:
        files = settings_files()
        settings = Dynaconf(
            envvar_prefix="DIDMOS",
            settings_files=files,
            environments=False,
            load_dotenv=False,
            merge_enabled=True,
            **central.dynaconf_options(files, overrides),  # the central store's loader, when central.url is set
        )
        settings.as_dict()  # force loading now, so a broken file fails here, with its name
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read settings: {exc}") from exc
    for key, value in flatten(overrides or {}):
        settings.set(key, value, loader_identifier="overrides")

    records = namespace_records(pm)
    owners: dict[str, str] = {}
    for plugin, record in records:
        if record.validators:
            if record.name in owners:
                raise ConfigError(
                    f"settings namespace {record.name!r} is claimed by both {owners[record.name]!r} "
                    f"and {plugin!r}; only one plugin may declare its validators"
                )
            owners[record.name] = plugin
        for key, value in flatten(record.defaults, record.name + "."):
            if not settings.exists(key):
                settings.set(key, value, loader_identifier=f"defaults:{plugin}")

    _reject_unknown_keys(settings, records, owners)
    for _, record in records:
        settings.validators.register(*record.validators)
    try:
        settings.validators.validate_all()
    except ValidationError as exc:
        problems = [_explain(settings, validator, message) for validator, message in exc.details]
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems) if len(problems) > 1
                          else f"invalid setting {problems[0]}") from exc
    return settings, records


_EXPECTATIONS = {
    "is_type_of": lambda v: "of type " + (" or ".join(t.__name__ for t in v) if isinstance(v, tuple) else v.__name__),
    "gte": "at least {}".format, "gt": "more than {}".format, "lte": "at most {}".format, "lt": "less than {}".format,
    "len_min": "at least {} characters long".format, "is_in": lambda v: "one of " + ", ".join(map(repr, v)),
    "startswith": "starting with {!r}".format,
}


def _explain(settings: Dynaconf, validator, message: str) -> str:
    """``key: must be ..., got ... (from ...)`` instead of dynaconf's wording."""
    name = message.split(" ", 1)[0].lower() if message else ""
    if getattr(validator, "condition", None) is not None and " invalid for " not in message:
        return message  # a condition the plugin worded itself
    if not name or not settings.exists(name):
        return f"{name or '?'}: {message}"
    wanted = [_EXPECTATIONS[op](value) for op, value in validator.operations.items() if op in _EXPECTATIONS]
    value = settings.get(name)
    return f"{name} must be {', '.join(wanted) or 'valid'}; got {value!r} (from {source_of(settings, name)})"


def _reject_unknown_keys(settings: Dynaconf, records, owners: dict[str, str]) -> None:
    """A misspelt key in a known namespace would otherwise be silently ignored."""
    known = {key for _, record in records for key, _ in flatten(record.defaults, record.name + ".")}
    for key, _ in flatten(user_values(settings)):
        namespace = key.split(".", 1)[0]
        if namespace in owners and key not in known and not any(key.startswith(k + ".") for k in known):
            candidates = sorted(k for k in known if k.startswith(namespace + "."))
            raise ConfigError(
                f"unknown setting {key!r} (from {source_of(settings, key)}); "
                f"known settings of {namespace!r}: {', '.join(candidates)}"
            )


def user_values(settings: Dynaconf) -> dict[str, Any]:
    """The settings without dynaconf's internals and the host's control variables."""
    values = settings.as_dict(internal=False)
    return {
        key: value
        for key, value in values.items()
        if key.upper() not in CONTROL_VARIABLES and not key.upper().endswith("_FOR_DYNACONF")
        and key.upper() not in ("LOAD_DOTENV", "SETTINGS_MODULE")
    }


def _lookup(tree: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping):
            return False, None
        match = next((k for k in tree if str(k).lower() == part), None)
        if match is None:
            return False, None
        tree = tree[match]
    return True, tree


def source_of(settings: Dynaconf, key: str) -> str:
    """Where the effective value of ``key`` came from: a defaults plugin, a file, env or overrides."""
    source, previous = "unknown", (False, None)
    for entry in get_history(settings):
        found = _lookup(entry.get("value") or {}, key)
        if found[0] and found != previous:
            identifier = entry.get("identifier")
            if entry.get("loader", "").startswith("env"):
                source = "env DIDMOS_" + "__".join(part.upper() for part in key.split("."))
            elif identifier and str(identifier).startswith("defaults:"):
                source = str(identifier)
            elif identifier == "overrides":
                source = "overrides"
            elif entry.get("loader") == "central":
                source = "central"
            else:
                source = f"file {identifier}"
            previous = found
    return source


def is_secret(key: str, records) -> bool:
    """Whether a setting's value is masked: declared secret (or below one), or named like a password."""
    declared = {record.name + "." + secret for _, record in records for secret in record.secrets}
    if any(key == name or key.startswith(name + ".") for name in declared):
        return True
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def describe(settings: Dynaconf, records=()) -> list[tuple[str, Any, str]]:
    """``(key, value with secrets masked, source)`` for every effective setting, sorted by key.

    ``records`` are the namespace records from :func:`load_settings` (for declared secrets).
    """
    rows = []
    for key, value in sorted(flatten(user_values(settings))):
        shown = MASK if value not in (None, "") and is_secret(key, records) else value
        rows.append((key, shown, source_of(settings, key)))
    return rows
