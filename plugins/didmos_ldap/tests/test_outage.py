"""slapd stopped and restarted under writes: acknowledged writes survive, the outage is a clear 503."""

import secrets
import threading
import time
import uuid

import pytest

from didmos_host.directory import init_directory
from didmos_host.errors import Unavailable
from didmos_host.host import Host
from didmos_host.servers import SlapdServer, free_port

pytestmark = pytest.mark.slow


def test_writes_across_a_slapd_restart(tmp_path):
    server = SlapdServer(tmp_path / "slapd", port=free_port(), rootpw=secrets.token_urlsafe(12), password_hash="{SSHA}")
    server.start()
    service_password = secrets.token_urlsafe(12)
    overrides = {"directory": {"uri": server.uri, "config_uri": server.ldapi_uri, "bind_password": service_password,
                               "superadmin_password": "pw"},
                 "ldap": {"retry_seconds": 0.5, "connect_timeout": 1.0, "timeout": 2.0}}
    try:
        init_directory(Host.create(overrides))
        host = Host.create(overrides)
        directory = host.service("directory")
        acknowledged, unavailable, other = [], [], []
        done = threading.Event()

        def write():
            while not done.is_set():
                dn = f"cn=w-{uuid.uuid4().hex},dc=didmos,dc=de"
                try:
                    directory.add(dn, {"objectClass": ["applicationProcess"], "cn": [dn[3:37]]})
                    acknowledged.append(dn)
                except Unavailable:
                    unavailable.append(dn)
                    time.sleep(0.05)
                except Exception as exc:  # anything else is a bug this test exists to find
                    other.append(repr(exc))

        writers = [threading.Thread(target=write) for _ in range(3)]
        for thread in writers:
            thread.start()
        time.sleep(0.7)
        before_stop = len(acknowledged)
        server.stop()
        time.sleep(1.5)
        during = len(acknowledged)
        server.start()
        time.sleep(1.5)
        done.set()
        for thread in writers:
            thread.join(10)

        assert other == []
        assert before_stop > 0 and unavailable, "the outage should be seen as Unavailable"
        assert during - before_stop <= 3  # at most the writes in flight when the server went down
        assert len(acknowledged) > during, "writes resume after the restart"
        # reads retry through the reconnect, and every acknowledged write is there
        names = {entry.dn.lower() for entry in directory.iter_search("dc=didmos,dc=de", "(cn=w-*)", attrs=["1.1"])}
        missing = [dn for dn in acknowledged if dn.lower() not in names]
        assert missing == []
    finally:
        server.stop()


def test_reads_answer_unavailable_when_the_directory_stays_down(tmp_path):
    host = Host.create({"directory": {"uri": f"ldap://127.0.0.1:{free_port()}", "bind_password": "x"},
                        "ldap": {"retry_seconds": 0.3, "connect_timeout": 0.5}})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable"):
        host.service("directory").search("dc=de", "(objectClass=*)")
    assert time.monotonic() - started < 3  # bounded: no hang
