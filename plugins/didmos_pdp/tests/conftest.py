"""Fixtures shared by the didmos_pdp tests."""

import pytest

from didmos_host.host import Host


@pytest.fixture
def host(didmos_overrides):
    host = Host.create({**didmos_overrides, "pdp": {"refresh_seconds": 0.3}})
    yield host
    host.service("directory").close()
