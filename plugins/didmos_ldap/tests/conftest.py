"""Fixtures shared by the didmos_ldap tests."""

import pytest

from didmos_host.host import Host


@pytest.fixture
def make_directory(didmos_overrides):
    made = []

    def make(*plugins, **overrides):
        host = Host.create({**didmos_overrides, **overrides}, extra_plugins=plugins)
        made.append(host.service("directory"))
        return made[-1]

    yield make
    for directory in made:
        directory.close()
