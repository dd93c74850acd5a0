"""Shared helpers of the plugin's tests.

The fixtures ``didmos_slapd``, ``didmos_redis``, ``didmos_overrides``, ``make_app``, ``app`` and
``client`` come from didmos-host's pytest plugin ``didmos``, loaded automatically (docs/testing.md of
didmos). ``didmos_slapd`` is initialised with every installed plugin, this one included: its schema
migration is applied and its entries exist, as after ``didmos directory init``.
"""

from __future__ import annotations

import uuid

import pytest

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

SCIM = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


def unique(prefix: str) -> str:
    """A name no other test uses: the directory is shared by the whole test session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_user(client, password: str = "Secret-123-pw", **body) -> dict:
    """A user made by the superadmin through SCIM; fails the test unless it is created."""
    body.setdefault("userName", unique("user"))
    body.setdefault("name", {"givenName": "Test", "familyName": "User"})
    response = client.post("/scim/v2/Users", json={"password": password, **body}, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def patch(client, path: str, *operations: dict, headers=ADMIN):
    return client.patch(path, json={"schemas": [PATCH_OP], "Operations": list(operations)}, headers=headers)


@pytest.fixture(scope="module")
def app(didmos_overrides):
    """didmos's ``app`` fixture, built once per test module rather than once per test (building an app
    costs most of a second). Tests that need other settings or a throwaway plugin use ``make_app``."""
    from didmos_host.app import create_app

    app = create_app(**didmos_overrides)
    app.config["TESTING"] = True
    return app


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture
def admin_connection(didmos_slapd):
    """A python-ldap connection bound as the directory's root, to see what was really stored."""
    conn = didmos_slapd.admin_connection()
    yield conn
    conn.unbind_s()
