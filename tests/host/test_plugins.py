"""Plugin loading, ordering and the registering hooks, with throwaway plugins."""

import logging
import subprocess
import sys
import types

import click
import pytest
from click.testing import CliRunner

from didmos_host import hookimpl
from didmos_host.app import create_app
from didmos_host.errors import PluginError
from didmos_host.host import Host
from didmos_host.plugins import create_plugin_manager, describe_plugins, plugin_names
from didmos_host.records import Action, Actor, ResourceType, TaskHandler


def plugin(name="throwaway", **hooks):
    """A module-like plugin whose functions are hook implementations."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module


def test_installed_plugins_are_loaded_by_entry_point():
    names = plugin_names(create_plugin_manager())
    assert names[0] == "didmos_host"
    for expected in ("didmos_ldap", "didmos_pdp", "didmos_tasks", "didmos_scim"):
        assert expected in names


def test_unknown_hook_stops_start_up_naming_plugin_and_hook():
    class Misspelt:
        @hookimpl
        def didmos_autenticate(self, request):
            return None

    with pytest.raises(PluginError) as excinfo:
        create_plugin_manager([Misspelt()])
    message = str(excinfo.value)
    assert "didmos_autenticate" in message
    assert "Misspelt" in message
    assert "didmos_authenticate" in message  # the list of real hooks helps spot the typo


def test_disable_plugins_blocks_by_name(monkeypatch):
    monkeypatch.setenv("DIDMOS_DISABLE_PLUGINS", "didmos_ldap, didmos_scim")
    names = plugin_names(create_plugin_manager())
    assert "didmos_ldap" not in names and "didmos_scim" not in names
    assert "didmos_pdp" in names


def test_trace_plugins_logs_hook_calls(monkeypatch, caplog):
    monkeypatch.setenv("DIDMOS_TRACE_PLUGINS", "1")
    with caplog.at_level(logging.INFO, logger="didmos.plugins"):
        create_plugin_manager().hook.didmos_resource_types()
    assert any("didmos_resource_types" in record.getMessage() for record in caplog.records)


def test_describe_plugins_gives_versions_and_hooks():
    rows = {row["name"]: row for row in describe_plugins(create_plugin_manager())}
    assert rows["didmos_ldap"]["distribution"] == "didmos-ldap"
    assert rows["didmos_ldap"]["version"] == "0.1.0"
    assert "didmos_directory_migrations" in rows["didmos_ldap"]["hooks"]
    assert rows["didmos_host"]["distribution"] == "didmos-host"


def test_cli_plugins_and_disable_in_a_real_process():
    env_run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "didmos_host.cli", "plugins"], capture_output=True, text=True,
        env={**__import__("os").environ, **env}, check=True,
    ).stdout
    plugin_lines = lambda out: [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]  # noqa: E731
    assert "didmos_ldap 0.1.0 (didmos-ldap)" in env_run({})
    assert "didmos_ldap" not in plugin_lines(env_run({"DIDMOS_DISABLE_PLUGINS": "didmos_ldap"}))


def test_authorize_deny_wins_and_no_vote_denies():
    action = Action(operation="read", resource_type="User", target="dc=x")
    actor = Actor(dn="uid=a,dc=x", uuid="a")

    def host_with(*votes):  # only the host and these voters: the installed PDP would vote too
        return Host.create(load_entry_points=False, extra_plugins=[
            plugin(f"voter{i}", didmos_authorize=hookimpl(lambda actor, action, v=v: v)) for i, v in enumerate(votes)
        ])

    assert host_with().authorize(actor, action) is False  # nobody votes
    assert host_with(None).authorize(actor, action) is False
    assert host_with(True).authorize(actor, action) is True
    assert host_with(True, False).authorize(actor, action) is False
    assert host_with(True, None).authorize(actor, action) is True


def test_duplicate_registrations_are_rejected():
    handler = TaskHandler(name="same", function=lambda payload, context: None)
    first = plugin("a", didmos_task_handlers=hookimpl(lambda: [handler]))
    second = plugin("b", didmos_task_handlers=hookimpl(lambda: [handler]))
    with pytest.raises(PluginError, match="task handler named 'same'"):
        Host.create(extra_plugins=[first, second])

    users = ResourceType(name="User", endpoint="/Users", schema="urn:x", object_classes=("person",), base="x")
    with pytest.raises(PluginError, match="resource type named 'User'"):
        Host.create(extra_plugins=[plugin("c", didmos_resource_types=hookimpl(lambda: [users])),
                                   plugin("d", didmos_resource_types=hookimpl(lambda: [users]))])


def test_resource_types_are_indexed_by_name():
    users = ResourceType(name="User", endpoint="/Users", schema="urn:x", object_classes=("person",), base="x")
    host = Host.create(load_entry_points=False, extra_plugins=[plugin(didmos_resource_types=hookimpl(lambda: [users]))])
    assert host.resource_types == {"User": users}


def test_attribute_mapping_tryfirst_replaces_and_wrapper_edits():
    users = ResourceType(name="User", endpoint="/Users", schema="urn:x", object_classes=("person",), base="x")
    builtin = plugin("builtin", didmos_attribute_mapping=hookimpl(trylast=True)(lambda resource_type: {"userName": "uid"}))
    override = plugin("override", didmos_attribute_mapping=hookimpl(tryfirst=True)(lambda resource_type: {"userName": "mail"}))

    def adjust(resource_type):
        mapping = yield
        return {**mapping, "title": "title"}

    wrapper = plugin("wrapper", didmos_attribute_mapping=hookimpl(wrapper=True)(adjust))
    def mapping(*plugins):  # only these plugins: the installed SCIM plugin has its own built-in mapping
        host = Host.create(load_entry_points=False, extra_plugins=plugins)
        return host.hook.didmos_attribute_mapping(resource_type=users)

    assert mapping(builtin) == {"userName": "uid"}
    # load order must not matter: the override wins whether it is registered before or after
    for order in ([builtin, override], [override, builtin]):
        assert mapping(*order) == {"userName": "mail"}
    assert mapping(builtin, wrapper) == {"userName": "uid", "title": "title"}


def test_ldap_interceptor_hooks_are_called_in_order_and_can_reject():
    from didmos_host.errors import OperationRejected
    from didmos_host.records import LdapOperation

    seen = []

    def pre_change(operation, actor):
        operation.attributes = ["cn"]
        seen.append("first")

    def pre_reject(operation, actor):
        seen.append("second")
        if operation.dn.startswith("cn=forbidden"):
            raise OperationRejected("no writes below forbidden")

    host = Host.create(extra_plugins=[
        plugin("late", didmos_ldap_pre_operation=hookimpl(trylast=True)(pre_reject)),
        plugin("early", didmos_ldap_pre_operation=hookimpl(tryfirst=True)(pre_change)),
        plugin("post", didmos_ldap_post_operation=hookimpl(lambda operation, result, actor: seen.append(result))),
    ])
    operation = LdapOperation(kind="search", dn="dc=de")
    host.hook.didmos_ldap_pre_operation(operation=operation, actor=None)
    host.hook.didmos_ldap_post_operation(operation=operation, result=[("dc=de", {})], actor=None)
    assert operation.attributes == ["cn"] and seen == ["first", "second", [("dc=de", {})]]
    with pytest.raises(OperationRejected, match="forbidden"):
        host.hook.didmos_ldap_pre_operation(operation=LdapOperation(kind="delete", dn="cn=forbidden,dc=de"), actor=None)


def test_authenticate_first_result_wins():
    request = object()
    anna = Actor(dn="uid=anna,dc=de", uuid="anna")
    host = Host.create(extra_plugins=[
        plugin("no", didmos_authenticate=hookimpl(lambda request: None)),
        plugin("yes", didmos_authenticate=hookimpl(lambda request: anna)),
    ])
    assert host.hook.didmos_authenticate(request=request) is anna
    assert Host.create().hook.didmos_authenticate(request=request) is None


def test_cli_commands_hook_adds_a_command():
    from didmos_host import cli as cli_module

    @click.command("hello")
    def hello():
        click.echo("hello from a plugin")

    pm = create_plugin_manager([plugin(didmos_cli_commands=hookimpl(lambda: [hello]))])
    group = click.Group(commands=dict(cli_module.cli.commands))
    cli_module.add_plugin_commands(group, pm)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_a_cli_command_name_taken_twice_stops_naming_both(capsys):
    from didmos_host import cli as cli_module

    clash = plugin("clashing", didmos_cli_commands=hookimpl(lambda: [click.Command("serve")]))
    with pytest.raises(SystemExit) as exit_info:
        cli_module.add_plugin_commands(click.Group(commands=dict(cli_module.cli.commands)), create_plugin_manager([clash]))
    assert exit_info.value.code == 2
    assert "plugin 'clashing' adds the command 'serve', which 'didmos_host' already has" in capsys.readouterr().err


def test_the_host_plugin_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("DIDMOS_DISABLE_PLUGINS", "didmos_host")
    with pytest.raises(PluginError, match="cannot be disabled"):
        create_plugin_manager()


def test_blueprints_startup_and_exception_hooks(make_app):
    from didmos_host.api import Blueprint, MethodView
    from didmos_host.errors import Forbidden

    blueprint = Blueprint("extra", __name__, url_prefix="/extra")

    @blueprint.route("/boom")
    class Boom(MethodView):
        def get(self):
            raise Forbidden("you may not boom")

    @blueprint.route("/conflict")
    class Conflict(MethodView):
        def get(self):
            from didmos_host.errors import AlreadyExists

            raise AlreadyExists("taken", detail={"attribute": "uid"})

    @blueprint.route("/crash")
    class Crash(MethodView):
        def get(self):
            raise RuntimeError("secret internals")

    started = []
    app = make_app(plugin(didmos_blueprints=hookimpl(lambda app: [blueprint]),
                          didmos_startup=hookimpl(lambda app: started.append(app))))
    assert started == [app]
    client = app.test_client()
    response = client.get("/extra/boom")
    assert response.status_code == 403 and response.json == {"status": 403, "detail": "you may not boom"}
    assert client.get("/extra/conflict").json == {"status": 409, "detail": "taken", "context": {"attribute": "uid"}}
    crash = client.get("/extra/crash")
    assert crash.status_code == 500 and "secret internals" not in crash.get_data(as_text=True)
    assert "/extra/boom" in client.get("/openapi.json").json["paths"]

    def teapot(error, request):
        import flask

        return flask.make_response({"custom": str(error)}, 418)

    custom = make_app(plugin(didmos_blueprints=hookimpl(lambda app: [blueprint]),
                             didmos_handle_exception=hookimpl(tryfirst=True)(teapot))).test_client()
    assert custom.get("/extra/boom").status_code == 418


def test_duplicate_blueprint_names_stop_start_up(make_app):
    from didmos_host.api import Blueprint

    def two(app):
        return [Blueprint("same", __name__), Blueprint("same", __name__)]

    with pytest.raises(PluginError, match="blueprint named 'same'"):
        make_app(plugin(didmos_blueprints=hookimpl(two)))


def test_healthz_answers(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_create_app_without_entry_points_has_only_the_host():
    app = create_app(load_entry_points=False)
    assert plugin_names(app.extensions["didmos"].pm) == ["didmos_host"]


def test_services_hook_lets_plugins_offer_services_to_each_other():
    class Clock:
        def now(self):
            return 42

    provider = plugin("provider", didmos_services=hookimpl(lambda host: host.provide("clock", Clock())))
    host = Host.create(extra_plugins=[provider])
    assert host.service("clock").now() == 42
    with pytest.raises(LookupError, match="no plugin provides the service 'calendar'"):
        host.service("calendar")
    with pytest.raises(ValueError, match="already provided"):
        host.provide("clock", Clock())
    # the LDAP plugin offers the directory service, without connecting yet
    assert type(host.service("directory")).__name__ == "Directory"


def test_auth_challenges_of_every_plugin_reach_the_401(make_app):
    from didmos_host.api import Blueprint, MethodView
    from didmos_host.app import current_actor

    guarded = Blueprint("guarded", __name__, url_prefix="/guarded")

    @guarded.route("/")
    class Guarded(MethodView):
        def get(self):
            return {"uuid": current_actor().uuid}

    app = make_app(plugin("bearer", didmos_blueprints=hookimpl(lambda app: [guarded]),
                          didmos_auth_challenges=hookimpl(lambda: ['Bearer realm="test"'])))
    response = app.test_client().get("/guarded/")
    assert response.status_code == 401
    # didmos_auth's own two (Basic, and Bearer for the tokens didmos issues) and the test plugin's
    assert sorted(response.headers.getlist("WWW-Authenticate")) == [
        'Basic realm="didmos", charset="UTF-8"', 'Bearer realm="didmos"', 'Bearer realm="test"']


def test_http_errors_and_validation_errors_use_the_didmos_body(make_app):
    from didmos_host.api import Blueprint, MethodView, Schema, fields

    class Query(Schema):
        count = fields.Integer(required=True)

    strict = Blueprint("strict", __name__, url_prefix="/strict")

    @strict.route("/")
    class Strict(MethodView):
        @strict.arguments(Query, location="query")
        def get(self, args):
            return {"count": args["count"]}

    client = make_app(plugin(didmos_blueprints=hookimpl(lambda app: [strict]))).test_client()
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json["status"] == 404 and "detail" in missing.json
    assert client.post("/healthz").status_code == 405
    invalid = client.get("/strict/?count=many")
    assert invalid.status_code == 422 and invalid.json["errors"]["query"]["count"]
    assert client.get("/strict/?count=3").json == {"count": 3}
    error_schema = client.get("/openapi.json").json["components"]["schemas"]["Error"]["properties"]
    assert set(error_schema) == {"status", "detail", "errors", "context"}
