"""scim2-tester's compliance checks (RFC 7643/7644) against /scim/v2, in-process and over HTTP.

scim2-tester discovers the server (/ServiceProviderConfig, /ResourceTypes, /Schemas), builds its
models from the published schemas, then for every resource type creates, reads, lists, searches,
replaces, patches (add, remove, replace on every writable attribute) and deletes resources filled
with random values. Each check yields a ``CheckResult``; a check that was not run is ``SKIPPED``,
and a skipped check hides a missing feature just as an error shows one, so both fail these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from scim2_client.engines.wsgi import WSGISCIMClient
from scim2_tester import CheckResult, Status, check_server

from didmos_host.servers import free_port
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth, running_dev

#: Statuses that say the server did what RFC 7644 asks (MUST, SHOULD or MAY). Everything else,
#: SKIPPED included, is a failure here.
PASSED = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE}
NOT_PASSED = {status.name for status in Status} - {status.name for status in PASSED}
#: How much of a failing check's debugging data (the response, mostly) goes into the message.
DATA_CHARS = 600


def _authorization() -> str:
    return basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)["Authorization"]


def _describe(result: CheckResult) -> str:
    where = f"[{result.resource_type}] " if result.resource_type else ""
    # Some reasons span lines (a filter parser's error with its caret); one line per check reads better.
    reason = " / ".join(part.strip() for part in (result.reason or "").splitlines() if part.strip())
    line = f"{result.status.name} {where}{result.title}: {reason or '(no reason given)'}"
    if result.data is not None and result.status not in PASSED:
        data = repr(result.data)
        line += "\n    data: " + (data if len(data) <= DATA_CHARS else data[:DATA_CHARS] + "...")
    return line


@pytest.fixture(scope="module")
def own_app(didmos_own_overrides):
    """An app on a directory of its own: scim2-tester expects what it created on the first page of an
    unfiltered list, which holds in an otherwise empty directory only."""
    from didmos_host.app import create_app

    return create_app(**didmos_own_overrides)


def test_scim2_tester_finds_no_error_and_skips_nothing(own_app):
    app = own_app
    client = WSGISCIMClient(app, base_url="http://localhost/scim/v2",
                            headers={"Authorization": _authorization()})

    results = check_server(client)

    failed = [result for result in results if result.status not in PASSED]
    report = "\n".join(_describe(result) for result in failed)
    assert not failed, f"{len(failed)} of {len(results)} scim2-tester checks failed or were skipped:\n{report}"
    # check_server stops after discovery when it cannot describe the server; make sure the CRUD
    # checks of every resource type we serve did run.
    served = set(app.extensions["didmos"].resource_types)
    checked = {result.resource_type for result in results if result.resource_type}
    assert served <= checked, f"no CRUD checks ran for {sorted(served - checked)}"


@pytest.fixture
def http_url(tmp_path):
    """``didmos dev`` as a new user runs it (a fresh directory of its own); yields the SCIM base URL."""
    with running_dev(tmp_path / "dev", free_port(), SUPERADMIN_PASSWORD) as url:
        yield f"{url}/scim/v2"


def test_scim2_cli_test_command_passes_over_http(http_url):
    scim2 = shutil.which("scim2", path=str(Path(sys.executable).parent)) or shutil.which("scim2")
    assert scim2, "the scim2 command is missing: pip install -e '.[test]' (it comes with scim2-cli)"
    # The CLI's help asks for secrets in SCIM_CLI_HEADERS rather than on the command line (-h).
    env = {**os.environ, "SCIM_CLI_HEADERS": f"Authorization: {_authorization()}", "NO_COLOR": "1"}
    done = subprocess.run([scim2, "--url", http_url, "test"], env=env, capture_output=True, text=True,
                          timeout=240)
    failed = _failed_cli_checks(done.stdout)
    # Without failing checks to show (discovery failed, the command crashed), show everything it said.
    report = "\n".join(failed) if failed else done.stdout + done.stderr
    assert done.returncode == 0 and not failed, (
        f"scim2 test exited {done.returncode}, {len(failed)} checks failed or were skipped:\n{report}")


def _failed_cli_checks(stdout: str) -> list[str]:
    """The checks ``scim2 test`` did not pass, one line each: it prints "STATUS title", then the reason indented."""
    failed: list[list[str]] = []
    current: list[str] | None = None
    for line in stdout.splitlines():
        if not line.startswith(" "):
            current = [line] if line.split(" ", 1)[0] in NOT_PASSED else None
            if current is not None:
                failed.append(current)
        elif current is not None:
            current.append(line.strip())
    return [" / ".join(check) for check in failed]
