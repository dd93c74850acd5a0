"""Fixtures of the outbox tests: a slapd and a redis of the test module's own (the dispatcher looks at
every open task, so no other module's tasks may be in sight), and the test handlers.

The handlers live in outbox_handlers.py, loaded here once as the module ``outbox_handlers`` (worker
subprocesses import it by that name from PYTHONPATH), so test files use ``import outbox_handlers``.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from didmos_host.host import Host
from didmos_host.servers import RedisServer, free_port
from didmos_host.testing import SUPERADMIN_PASSWORD, running_slapd

if "outbox_handlers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("outbox_handlers", Path(__file__).parent / "outbox_handlers.py")
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules["outbox_handlers"] = _module


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port(), persistence=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def overrides(slapd, own_redis):
    return {"directory": {"uri": slapd.uri, "config_uri": slapd.ldapi_uri, "bind_password": slapd.service_password,
                          "superadmin_password": SUPERADMIN_PASSWORD},
            "redis": {"url": own_redis.url}, "tasks": {"lease_seconds": 1.0, "dispatch_seconds": 0.5}}


@pytest.fixture(scope="module")
def host(overrides):
    host = Host.create(overrides, extra_plugins=[sys.modules["outbox_handlers"]])
    yield host
    host.service("directory").close()
