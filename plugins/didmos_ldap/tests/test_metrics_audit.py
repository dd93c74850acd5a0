"""The directory service's metrics (LDAP latency, cache hits and misses) and its audit records, against
the real slapd."""

import json
import logging
import uuid

import ldap
import pytest
from prometheus_client import REGISTRY

from didmos_host import hookimpl
from didmos_host.errors import AlreadyExists, NotFound, OperationRejected
from didmos_host.observability import request_id_scope
from didmos_host.records import Actor

ADMIN_DN = "didmosUUID=00000000-0000-0000-0000-000000000002,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"


def sample(name, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def audit_records(caplog):
    return [record for record in caplog.records if record.name == "didmos.audit"]


@pytest.fixture
def branch(make_directory):
    directory = make_directory()
    dn = f"ou=m-{uuid.uuid4().hex[:12]},dc=didmos,dc=de"
    directory.add(dn, {"objectClass": ["organizationalUnit"], "ou": [dn[5:19]]})
    return dn


def test_operations_are_timed_by_kind_and_result(make_directory, branch):
    directory = make_directory()
    searches = sample("didmos_ldap_operation_duration_seconds_count", operation="search", result="success")
    adds = sample("didmos_ldap_operation_duration_seconds_count", operation="add", result="success")
    missing = sample("didmos_ldap_operation_duration_seconds_count", operation="add", result="NotFound")
    directory.search(branch, "(objectClass=*)", ldap.SCOPE_BASE)
    directory.add(f"ou=a,{branch}", {"objectClass": ["organizationalUnit"], "ou": ["a"]})
    with pytest.raises(NotFound):
        directory.add(f"ou=a,ou=nowhere,{branch}", {"objectClass": ["organizationalUnit"], "ou": ["a"]})
    assert sample("didmos_ldap_operation_duration_seconds_count", operation="search", result="success") == searches + 1
    assert sample("didmos_ldap_operation_duration_seconds_count", operation="add", result="success") == adds + 1
    assert sample("didmos_ldap_operation_duration_seconds_count", operation="add", result="NotFound") == missing + 1
    assert sample("didmos_ldap_operation_duration_seconds_sum", operation="add", result="success") > 0


def test_cache_hits_and_misses_are_counted(make_directory, branch):
    directory = make_directory(ldap={"cache": {"enabled": True, "staleness_seconds": 1.0}})
    assert directory.cache.wait_until_serving(5)
    hits, misses = sample("didmos_ldap_cache_hits_total"), sample("didmos_ldap_cache_misses_total")
    directory.get(branch)  # a miss: read from LDAP and kept
    directory.get(branch)  # a hit
    directory.get(branch)  # a hit
    assert sample("didmos_ldap_cache_misses_total") == misses + 1
    assert sample("didmos_ldap_cache_hits_total") == hits + 2


def test_every_write_is_audited_with_names_never_values(make_directory, branch, caplog):
    directory = make_directory()
    actor = Actor(dn=ADMIN_DN, uuid="00000000-0000-0000-0000-000000000002")
    dn = f"cn=p,{branch}"
    caplog.set_level(logging.INFO, logger="didmos.audit")
    with request_id_scope("req-audit-1"):
        directory.add(dn, {"objectClass": ["inetOrgPerson"], "cn": ["p"], "sn": ["p"],
                           "userPassword": ["Very-Secret-1"]}, actor=actor)
        directory.modify(dn, [(ldap.MOD_REPLACE, "userPassword", ["Very-Secret-2"]),
                              (ldap.MOD_ADD, "description", ["d"])], actor=actor)
        moved = directory.move(dn, new_rdn="cn=q", actor=actor)
        directory.delete(moved, actor=None)
    records = audit_records(caplog)
    assert [r.event for r in records] == ["ldap.add", "ldap.modify", "ldap.modrdn", "ldap.delete"]
    add, modify, modrdn, delete = records
    assert all(r.request_id == "req-audit-1" and r.result == "success" for r in records)
    assert add.actor == ADMIN_DN and add.actor_id == "00000000-0000-0000-0000-000000000002" and add.target == dn
    assert add.attributes == ["cn", "objectClass", "sn", "userPassword"]
    assert modify.changes == ["replace userPassword", "add description"]
    assert modify.attributes == ["description", "userPassword"]
    assert (modrdn.new_rdn, modrdn.new_superior) == ("cn=q", None)
    assert delete.actor is None and delete.target == f"cn=q,{branch}"  # didmos itself
    text = json.dumps([r.__dict__ for r in records], default=str)
    assert "Very-Secret" not in text


def test_failed_and_rejected_writes_are_audited(make_directory, branch, caplog):
    class NoDeletes:
        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            if operation.kind == "delete":
                raise OperationRejected("deletes are off in this test")

    directory = make_directory(NoDeletes())
    caplog.set_level(logging.INFO, logger="didmos.audit")
    with pytest.raises(AlreadyExists):
        directory.add(branch, {"objectClass": ["organizationalUnit"], "ou": [branch[5:19]]})
    with pytest.raises(OperationRejected):
        directory.delete(branch)
    exists, rejected = audit_records(caplog)
    assert (exists.event, exists.result, exists.status, exists.error_type) == ("ldap.add", "failure", 409,
                                                                               "AlreadyExists")
    assert exists.error == f"entry {branch} exists already"
    assert (rejected.event, rejected.result, rejected.status, rejected.error) == (
        "ldap.delete", "failure", 403, "deletes are off in this test")
    rejections = sample("didmos_ldap_operation_duration_seconds_count", operation="delete",
                        result="OperationRejected")
    assert rejections >= 1
