"""Central settings: a document in redis between settings files and environment variables, pushed after
validation, pulled with secrets masked, and followed by running API processes and workers."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import redis
from click.testing import CliRunner
from dynaconf.vendor import toml
from werkzeug.test import Client

from didmos_host import hookimpl
from didmos_host.app import create_app
from didmos_host.central import LiveApp, location_of_settings, read
from didmos_host.cli import cli
from didmos_host.config import describe
from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.records import TaskHandler
from didmos_host.servers import free_port, stop_process
from didmos_host.tasks import enqueue, run_worker


@pytest.fixture
def central(didmos_redis, monkeypatch, tmp_path):
    """The environment of a node using a central store (a key of its own in the test redis); yields a
    function that pushes a TOML text through the CLI and returns click's result."""
    key = f"didmos:settings:test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DIDMOS_CENTRAL__URL", didmos_redis.url)
    monkeypatch.setenv("DIDMOS_CENTRAL__KEY", key)
    monkeypatch.delenv("DIDMOS_SETTINGS_FILES", raising=False)

    def push(text: str, *options: str):
        path = tmp_path / f"central-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(text)
        return CliRunner().invoke(cli, ["config", "push", str(path), *options])

    push.key = key
    yield push
    redis.Redis.from_url(didmos_redis.url).delete(key)


def _sources(host: Host) -> dict[str, tuple]:
    return {key: (value, source) for key, value, source in describe(host.settings, host.namespaces)}


def test_central_values_sit_between_settings_files_and_the_environment(central, monkeypatch, tmp_path):
    assert central('[api]\ntitle = "From central"\nthreads = 3\nworkers = 5\n').exit_code == 0
    file = tmp_path / "node.toml"
    file.write_text('[api]\ntitle = "From the file"\nmax_content_length = 4096\nthreads = 7\n')
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(file))
    monkeypatch.setenv("DIDMOS_API__WORKERS", "9")
    rows = _sources(Host.create())
    assert rows["api.title"] == ("From central", "central")  # central beats the file
    assert rows["api.threads"] == (3, "central")
    assert rows["api.max_content_length"] == (4096, f"file {file}")  # tables merge key by key
    assert rows["api.workers"] == (9, "env DIDMOS_API__WORKERS")  # the environment beats central
    assert rows["api.port"] == (8000, "defaults:didmos_host")

    shown = CliRunner().invoke(cli, ["config", "show"])
    assert shown.exit_code == 0
    assert any(line.startswith("api.title ") and line.endswith('= "From central"    # central')
               for line in shown.output.splitlines()), shown.output


def test_a_rejected_push_names_the_setting_and_changes_nothing(central, didmos_redis):
    first = central('[api]\ntitle = "Kept"\n')
    assert first.exit_code == 0 and "as revision 1" in first.output
    client = redis.Redis.from_url(didmos_redis.url)
    before = client.hgetall(central.key)

    bad = {
        '[api]\nport = "eighty"\n': "invalid setting api.port must be of type int",
        '[api]\ntitle = "x"\nprot = 80\n': "unknown setting 'api.prot' (from central)",
        '[ldap]\npeople_dn = "people"\n': "ldap.people_dn must be a DN",
        '[[auth.oidc.providers]]\nissuer = "https://idp.example.org"\n': "auth.oidc.providers[0].audience is required",
        '[central]\nurl = "redis://elsewhere:6379/0"\n': "central.url cannot be in the central settings",
        '[redis]\nsentinels = ["10.0.0.1:26379"]\n': "redis.sentinels cannot be in the central settings",
        '[api\ntitle = "broken"\n': "is not valid TOML",
    }
    for text, message in bad.items():
        result = central(text)
        assert result.exit_code == 2, (text, result.output)
        assert message in result.output, (text, result.output)
    assert client.hgetall(central.key) == before
    assert Host.create().settings.api.title == "Kept"

    dry = central('[api]\ntitle = "Only checked"\n', "--dry-run")
    assert dry.exit_code == 0 and "valid; not stored" in dry.output and "revision 1" in dry.output
    assert client.hgetall(central.key) == before


def test_pull_prints_the_document_with_its_revision_and_secrets_masked(central):
    assert central('[api]\ntitle = "Pulled"\n[directory]\nbind_password = "s3cret-value"\n').exit_code == 0
    assert central('[api]\ntitle = "Pulled again"\n[directory]\nbind_password = "s3cret-value"\n').exit_code == 0
    runner = CliRunner()
    pulled = runner.invoke(cli, ["config", "pull"])
    assert pulled.exit_code == 0
    assert pulled.output.startswith("# central settings revision 2 at redis://")
    assert "s3cret-value" not in pulled.output and 'bind_password = "********"' in pulled.output
    assert toml.loads(pulled.output)["api"]["title"] == "Pulled again"
    shown = runner.invoke(cli, ["config", "pull", "--show-secrets", "--json"])
    document = json.loads(shown.output)
    assert document["revision"] == 2 and document["settings"]["directory"]["bind_password"] == "s3cret-value"


def test_nothing_stored_and_no_store(central, monkeypatch):
    assert "nothing stored yet" in CliRunner().invoke(cli, ["config", "pull"]).output
    assert Host.create().settings.api.title == "didmos"
    monkeypatch.setenv("DIDMOS_CENTRAL__URL", f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConfigError, match="the central settings store at redis://127.0.0.1:.* cannot be reached"):
        Host.create()
    monkeypatch.delenv("DIDMOS_CENTRAL__URL")
    result = central('[api]\ntitle = "x"\n')
    assert result.exit_code == 2 and "central.url is empty" in result.output


def test_a_live_app_switches_to_a_new_revision_and_closes_the_old_directory_pools(central, didmos_overrides):
    assert central('[api]\ntitle = "One"\n').exit_code == 0
    live = LiveApp(create_app(**didmos_overrides, central={"refresh_seconds": 0.2}))
    old_host = live.host
    client = Client(live)

    def title():
        with client.get("/openapi.json") as response:  # closed: the request is over
            return response.json["info"]["title"]

    assert title() == "One"
    closed = []
    old_host.services["directory"].close = lambda: closed.append(True)
    held = client.get("/healthz")  # its response is not closed yet: a request still running on the old app

    assert central('[api]\ntitle = "Two"\n').exit_code == 0
    time.sleep(0.25)
    assert title() == "Two"
    assert live.host is not old_host and closed == []  # the old app still has a request in flight
    held.close()
    assert closed == [True]  # its last request is done: its directory pools are closed
    assert location_of_settings(live.host.settings).key == central.key

    assert central('[api]\ntitle = "x"\nprot = 1\n').exit_code == 2  # refused: nothing to follow
    time.sleep(0.25)
    assert title() == "Two"


def title_of(payload, context):
    with open(payload["log"], "a") as log:
        log.write(context.host.settings.api.title + "\n")


class TitleTask:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.central-title", function=title_of, queue="central-test", retries=0)]


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_worker_takes_the_new_settings_between_jobs(central, didmos_overrides, tmp_path, mode):
    assert central('[api]\ntitle = "Before"\n').exit_code == 0
    host = Host.create({**didmos_overrides, "central": {"refresh_seconds": 0.1}, "worker": {"mode": mode}},
                       extra_plugins=[TitleTask()])
    log = tmp_path / "titles.log"
    enqueue(host, "test.central-title", {"log": str(log)})
    run_worker(host, burst=True, queues=["central-test"])
    assert central('[api]\ntitle = "After"\n').exit_code == 0
    time.sleep(0.15)
    enqueue(host, "test.central-title", {"log": str(log)})
    run_worker(host, burst=True, queues=["central-test"])  # the same host: the worker rebuilds it before the job
    assert log.read_text() == "Before\nAfter\n"


# -- two `didmos serve` processes ----------------------------------------------------------------------


def _title(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as response:
        return json.load(response)["info"]["title"]


@pytest.mark.slow
def test_two_serve_processes_follow_a_push_without_a_restart(central, didmos_overrides, monkeypatch, tmp_path):
    refresh = 1.0
    node = {**didmos_overrides, "central": {"url": os.environ["DIDMOS_CENTRAL__URL"], "key": central.key,
                                           "refresh_seconds": refresh}}
    settings = tmp_path / "node.toml"
    settings.write_text(toml.dumps(node))
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(settings))
    assert central('[api]\ntitle = "Revision one"\n').exit_code == 0

    ports, processes = [free_port(), free_port()], []
    try:
        for port in ports:
            log = open(tmp_path / f"serve-{port}.log", "wb")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "didmos_host.cli", "serve", "--port", str(port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "DIDMOS_API__THREADS": "2"}))
        deadline = time.monotonic() + 60
        while True:
            try:
                assert [_title(port) for port in ports] == ["Revision one"] * 2
                break
            except OSError:
                assert time.monotonic() < deadline and all(p.poll() is None for p in processes), \
                    [(tmp_path / f"serve-{port}.log").read_text() for port in ports]
                time.sleep(0.2)

        assert central('[api]\ntitle = "Revision two"\n').exit_code == 0
        pushed = time.monotonic()
        seen = {}
        while len(seen) < 2 and time.monotonic() - pushed < refresh + 10:
            for port in ports:
                if port not in seen and _title(port) == "Revision two":
                    seen[port] = time.monotonic() - pushed
            time.sleep(0.05)
        print(f"\nseconds from push to the new title: {seen}")
        assert len(seen) == 2 and max(seen.values()) < refresh + 5, seen

        refused = central('[api]\ntitle = "Never"\nworkers = 0\n')
        assert refused.exit_code == 2 and "api.workers must be" in refused.output
        time.sleep(2 * refresh + 0.5)
        assert [_title(port) for port in ports] == ["Revision two"] * 2
        assert all(process.poll() is None for process in processes)  # same processes, never restarted
        assert read(location_of_settings(Host.create().settings)).revision == 2
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                stop_process(process)
