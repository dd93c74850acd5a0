"""GET /readyz: 200 while the directory and redis answer, 503 naming what does not, never slow."""

import socket
import time

import pytest

from didmos_host import hookimpl
from didmos_host.records import ReadinessCheck
from didmos_host.servers import RedisServer, free_port


def test_ready_when_the_directory_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ready"
    assert {name: check["status"] for name, check in response.json["checks"].items()} == {
        "directory": "ok", "redis": "ok"}


def test_not_ready_while_redis_is_stopped_and_ready_again_when_it_is_back(make_app, tmp_path):
    server = RedisServer(tmp_path / "redis", port=free_port(), persistence=False)
    server.start()
    try:
        # A password in the URL must not reach the probe.
        client = make_app(redis={"url": f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"}).test_client()
        server.stop()
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3
        assert response.status_code == 503 and response.mimetype == "application/json"
        body = response.json
        assert body["status"] == "not ready"
        assert body["checks"]["directory"]["status"] == "ok"
        assert body["checks"]["redis"]["status"] == "down"
        assert str(server.port) in body["checks"]["redis"]["detail"]
        assert "s3cret-pw" not in response.get_data(as_text=True)
        server.start()
        assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_not_ready_when_the_directory_cannot_be_reached(make_app):
    port = free_port()
    client = make_app(directory={"uri": f"ldap://127.0.0.1:{port}"}).test_client()
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 3
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["directory"]["status"] == "down" and str(port) in checks["directory"]["detail"]
    assert checks["redis"]["status"] == "ok"


def test_a_server_that_accepts_but_never_answers_is_down_within_the_timeout(make_app):
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = make_app(directory={"uri": f"ldap://127.0.0.1:{silent.getsockname()[1]}"},
                          api={"readiness_timeout": 0.5}).test_client()
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 1.5
    assert response.status_code == 503
    directory = response.json["checks"]["directory"]
    # the LDAP timeout (TIMEOUT) and the probe's deadline race; either way it is down, in time
    assert directory["status"] == "down"
    assert directory["detail"] == "no answer within 0.5 s" or directory["detail"].endswith(": TIMEOUT")


def test_a_hanging_directory_uri_does_not_hide_the_next_one(make_app, didmos_slapd):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        # failover: each URI gets its share of the 2 s, so the answering one is reached in time
        uris = f"ldap://127.0.0.1:{silent.getsockname()[1]} {didmos_slapd.uri}"
        client = make_app(directory={"uri": uris}).test_client()
        response = client.get("/readyz")
    assert response.status_code == 200, response.json


def test_plugins_add_readiness_checks_through_didmos_readiness_checks(make_app):
    class Mailer:
        @hookimpl
        def didmos_readiness_checks(self, host):
            def relay(timeout):
                raise ConnectionRefusedError(f"mail relay smtp://user:pw@127.0.0.1:25 refused ({timeout:g} s)")

            return [ReadinessCheck("mail", relay), ReadinessCheck("clock", lambda timeout: "in sync")]

    response = make_app(Mailer()).test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["clock"] == {"status": "ok", "detail": "in sync"}
    assert checks["mail"] == {"status": "down", "detail": "mail relay smtp://***@127.0.0.1:25 refused (2 s)"}
    assert checks["directory"]["status"] == checks["redis"]["status"] == "ok"


@pytest.mark.parametrize("value", [0, -1, "fast", 60])
def test_a_bad_readiness_timeout_names_the_setting(make_app, value):
    from didmos_host.errors import ConfigError

    with pytest.raises(ConfigError, match="api.readiness_timeout"):
        make_app(api={"readiness_timeout": value})
