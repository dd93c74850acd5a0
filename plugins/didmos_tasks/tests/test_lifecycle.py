"""Lifecycle events and automatic roles, against the real slapd and redis.

The sweep and the reconciliation run in-process through the app's ``lifecycle`` service; the tasks the
interceptor submits for SCIM writes run in ``run_worker(burst=True)`` with a host of its own, as
``didmos worker`` runs them. Every test names its users, roles and rule filters with a tag of its own
(the session slapd is shared), and looks only at those.
"""

from __future__ import annotations

import email
import email.policy
import logging
import secrets
import uuid
from datetime import datetime, timedelta, timezone

import ldap
import pytest
from aiosmtpd.controller import Controller

from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.servers import free_port
from didmos_host.tasks import run_worker
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth
from didmos_tasks.lifecycle import ROLES_TASK, WELCOME_TASK, generalized

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
NOTIFY_ON = {"enabled": True, "from_address": "idm@example.org", "host": "127.0.0.1", "security": "none"}


class Inbox:
    """An aiosmtpd handler that keeps every message it is given, with its envelope recipients."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"

    def to(self, address: str) -> list:
        return [message for rcpts, message in self.messages if rcpts == [address]]


@pytest.fixture(scope="module")
def smtp():
    """A real SMTP server on loopback, and the notify settings that send to it."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, {**NOTIFY_ON, "port": port}
    controller.stop()


@pytest.fixture
def tag():
    return uuid.uuid4().hex[:6]


@pytest.fixture
def ldap_admin(didmos_slapd):
    return didmos_slapd.admin_connection()


@pytest.fixture
def make_user(ldap_admin):
    """``make_user(**attributes)``: a user made directly in LDAP; returns (id, dn, password)."""
    created = []

    def make(**attributes):
        user_id = str(uuid.uuid4())
        dn = f"didmosUUID={user_id},{PEOPLE}"
        password = secrets.token_urlsafe(12)
        classes = [b"inetOrgPerson", b"didmosObject", b"didmosPerson", *attributes.pop("classes", [])]
        attrs = [("objectClass", classes), ("uid", [f"l{user_id[:8]}".encode()]), ("cn", [b"Jane Doe"]),
                 ("sn", [b"Doe"]), ("didmosUUID", [user_id.encode()]), ("didmosTenant", [b"default-tenant"]),
                 ("userPassword", [password.encode()])]
        attrs += [(name, [v.encode() for v in (value if isinstance(value, list) else [value])])
                  for name, value in attributes.items()]
        ldap_admin.add_s(dn, attrs)
        created.append(dn)
        return user_id, dn, password

    yield make
    for dn in created:
        try:
            ldap_admin.delete_s(dn)
        except ldap.NO_SUCH_OBJECT:
            pass


def read(ldap_admin, dn, *attrs):
    try:
        (_, found), = ldap_admin.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs) or None)
    except ldap.NO_SUCH_OBJECT:
        return None
    return {k: [v.decode() for v in values] for k, values in found.items()}


def roles_of(ldap_admin, dn):
    entry = read(ldap_admin, dn, "didmosRoleAssignment") or {}
    return {ldap.dn.str2dn(v)[0][0][1] for v in entry.get("didmosRoleAssignment", [])}


def ago(**delta) -> str:
    return generalized(datetime.now(timezone.utc) - timedelta(**delta))


def ahead(**delta) -> str:
    return generalized(datetime.now(timezone.utc) + timedelta(**delta))


def lifecycle(app):
    return app.extensions["didmos"].service("lifecycle")


def work(overrides, **settings):
    """A burst worker with a host of its own, until the queues are empty."""
    worker = Host.create({**overrides, "pdp": {"refresh_seconds": 0.2}, **settings})
    try:
        run_worker(worker, burst=True)
    finally:
        worker.service("directory").close()


# -- time-based ------------------------------------------------------------------------------------------

def test_an_end_date_in_the_past_deactivates_the_account_and_its_login_fails(make_app, make_user, ldap_admin):
    user_id, dn, password = make_user(didmosEndDate=ago(hours=1))
    later_id, later_dn, _ = make_user(didmosEndDate=ahead(days=30))
    assert make_app().test_client().get("/auth/whoami", headers=basic_auth(user_id, password)).status_code == 200

    app = make_app()
    report = lifecycle(app).sweep()
    assert dn in report["deactivated"] and later_dn not in report["deactivated"]
    entry = read(ldap_admin, dn, "didmosActive", "didmosDeactivatedAt")
    assert entry["didmosActive"] == ["FALSE"] and entry["didmosDeactivatedAt"]
    assert read(ldap_admin, later_dn, "didmosActive") == {}
    assert app.test_client().get("/auth/whoami", headers=basic_auth(user_id, password)).status_code == 401
    assert dn not in lifecycle(app).sweep()["deactivated"]  # done once


@pytest.mark.parametrize("mode", ["delete", "anonymise"])
def test_an_account_deactivated_long_enough_is_deleted_or_anonymised(make_app, make_user, ldap_admin, mode):
    old = dict(didmosEndDate=ago(days=200), didmosActive="FALSE", didmosDeactivatedAt=ago(days=100),
               classes=[b"didmosLifecycle"], mail="jane@example.org", givenName="Jane", mobile="+49 1")
    user_id, dn, _ = make_user(**old)
    _, recent_dn, _ = make_user(**{**old, "didmosDeactivatedAt": ago(days=10)})
    app = make_app(lifecycle={"after_deactivation": mode, "delete_after_days": 90})

    report = lifecycle(app).sweep()
    assert dn in report["retired"] and recent_dn not in report["retired"]
    assert read(ldap_admin, recent_dn, "mail")["mail"] == ["jane@example.org"]
    if mode == "delete":
        assert read(ldap_admin, dn) is None
    else:
        entry = read(ldap_admin, dn, "*", "didmosAnonymisedAt")
        assert entry["didmosUUID"] == [user_id] and entry["cn"] == ["anonymised"] and entry["sn"] == ["anonymised"]
        assert entry["uid"] == [f"anonymised-{user_id}"] and entry["didmosAnonymisedAt"]
        assert not {"mail", "givenName", "mobile", "userPassword"} & set(entry)
        assert dn not in lifecycle(app).sweep()["retired"]  # once


def test_keep_and_zero_days_retire_nothing(make_app, make_user, ldap_admin):
    _, dn, _ = make_user(didmosEndDate=ago(days=200), didmosActive="FALSE", didmosDeactivatedAt=ago(days=100),
                         classes=[b"didmosLifecycle"])
    assert dn not in lifecycle(make_app(lifecycle={"after_deactivation": "keep"})).sweep()["retired"]
    assert dn not in lifecycle(make_app(lifecycle={"delete_after_days": 0})).sweep()["retired"]
    assert read(ldap_admin, dn) is not None


def test_reminders_are_sent_once_each(make_app, make_user, ldap_admin, didmos_overrides, smtp, tag):
    inbox, notify = smtp
    mail = f"r-{tag}@example.org"
    _, dn, _ = make_user(didmosEndDate=ahead(days=10), mail=mail)
    app = make_app(notify=notify)

    lifecycle(app).sweep()
    lifecycle(app).sweep()
    work(didmos_overrides, notify=notify)  # the mails are outbox tasks: a real worker sends them
    [first] = inbox.to(mail)
    assert first["Subject"].startswith(f"Your account l") and "expires on" in first["Subject"]
    assert read(ldap_admin, dn, "didmosReminderSent")["didmosReminderSent"][0].startswith("14:")

    ldap_admin.modify_s(dn, [(ldap.MOD_REPLACE, "didmosEndDate", [ahead(days=2).encode()])])
    lifecycle(app).sweep()
    lifecycle(app).sweep()
    work(didmos_overrides, notify=notify)
    assert len(inbox.to(mail)) == 2
    expires = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%d")
    assert inbox.to(mail)[1]["Subject"].endswith(f"expires on {expires}")


# -- change-based --------------------------------------------------------------------------------------

def rule(tag, *roles, name="teachers"):
    return {"name": name, "filter": f"(title=Teacher-{tag})", "roles": list(roles) or [f"teacher-{tag}"]}


def test_a_role_rule_applies_on_create_and_on_change_through_a_worker(make_app, didmos_overrides, ldap_admin, tag):
    settings = {"lifecycle": {"role_rules": [rule(tag)]}}
    app = make_app(pdp={"refresh_seconds": 0.2}, **settings)
    app.extensions["didmos"].service("rbac_admin").add_role(f"teacher-{tag}")
    client = app.test_client()

    def create(**extra):
        response = client.post("/scim/v2/Users", headers=ADMIN, json={
            "schemas": [USER], "userName": f"t-{uuid.uuid4().hex[:10]}", "name": {"givenName": "A", "familyName": "B"},
            **extra})
        assert response.status_code == 201, response.json
        return response.json["id"], app.extensions["didmos"].service("rbac_admin").user_dn(response.json["id"])

    _, teacher = create(title=f"Teacher-{tag}")
    other_id, other = create(title="Pupil")
    submitted = [t for t in app.extensions["didmos"].service("outbox").list() if t.name == ROLES_TASK]
    assert {t.payload["dn"].lower() for t in submitted} >= {teacher.lower(), other.lower()}
    work(didmos_overrides, **settings)
    assert f"teacher-{tag}" in roles_of(ldap_admin, teacher) and f"teacher-{tag}" not in roles_of(ldap_admin, other)

    changed = client.patch(f"/scim/v2/Users/{other_id}", headers=ADMIN, json={
        "schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": f"Teacher-{tag}"}]})
    assert changed.status_code == 200, changed.json
    work(didmos_overrides, **settings)
    assert f"teacher-{tag}" in roles_of(ldap_admin, other)


def test_reconciliation_assigns_missing_roles_to_users_made_in_ldap(make_app, make_user, ldap_admin, tag):
    app = make_app(lifecycle={"role_rules": [rule(tag, f"teacher-{tag}", f"staff-{tag}")]})
    admin = app.extensions["didmos"].service("rbac_admin")
    admin.add_role(f"teacher-{tag}")
    admin.add_role(f"staff-{tag}")
    _, dn, _ = make_user(title=f"Teacher-{tag}", classes=[b"didmosRoleHolder"],
                         didmosRoleAssignment=f"cn=staff-{tag},ou=roles,{RBAC}")
    _, pupil, _ = make_user(title=f"Pupil-{tag}")

    outcomes = lifecycle(app).reconcile()
    assert {"rule": "teachers", "entry": dn, "assigned": [f"teacher-{tag}"]} in outcomes
    assert roles_of(ldap_admin, dn) == {f"teacher-{tag}", f"staff-{tag}"} and not roles_of(ldap_admin, pupil)
    assert all(o["entry"] != dn for o in lifecycle(app).reconcile())  # nothing missing: not even read


def test_a_rule_that_breaks_separation_of_duty_is_reported_and_not_half_applied(make_app, make_user, ldap_admin,
                                                                                 tag, caplog):
    app = make_app(lifecycle={"role_rules": [rule(tag, f"clerk-{tag}", f"payer-{tag}", name="clerks")]})
    admin = app.extensions["didmos"].service("rbac_admin")
    for role in ("clerk", "payer", "approver"):
        admin.add_role(f"{role}-{tag}")
    admin.create_sod_set(f"pay-{tag}", [f"payer-{tag}", f"approver-{tag}"], 2)
    _, dn, _ = make_user(title=f"Teacher-{tag}", classes=[b"didmosRoleHolder"],
                         didmosRoleAssignment=f"cn=approver-{tag},ou=roles,{RBAC}")

    with caplog.at_level(logging.WARNING, logger="didmos.lifecycle"):
        outcome, = lifecycle(app).apply_rules(dn)
    assert outcome["rule"] == "clerks" and outcome["violation"]["set"] == f"pay-{tag}"
    assert roles_of(ldap_admin, dn) == {f"approver-{tag}"}  # not even clerk
    assert any("clerks" in r.message and dn in r.message and f"pay-{tag}" in r.message for r in caplog.records)


def test_adding_a_user_sends_one_welcome_mail(make_app, didmos_overrides, smtp, tag):
    inbox, notify = smtp
    app = make_app(notify=notify)
    host = app.extensions["didmos"]
    mail = f"w-{tag}@example.org"
    response = app.test_client().post("/scim/v2/Users", headers=ADMIN, json={
        "schemas": [USER], "userName": f"w-{tag}", "name": {"givenName": "W", "familyName": "X"},
        "emails": [{"type": "work", "value": mail}]})
    assert response.status_code == 201, response.json
    dn = host.service("rbac_admin").user_dn(response.json["id"])
    task, = [t for t in host.service("outbox").list() if t.name == WELCOME_TASK and t.payload["dn"] == dn]
    work(didmos_overrides, notify=notify)  # the welcome task, then the mail task it submits
    [welcome] = inbox.to(mail)
    assert welcome["Subject"] == f"Your account w-{tag} is ready"
    assert host.service("outbox").get(task.id).result["notified"] == mail
    # the welcome task run again (its worker died after submitting the mail): no second mail
    assert lifecycle(app).welcome(dn)["job"] == host.service("outbox").get(task.id).result["job"]
    work(didmos_overrides, notify=notify)
    assert len(inbox.to(mail)) == 1


def test_a_failing_interceptor_does_not_fail_the_request(make_app, tag, caplog):
    app = make_app(lifecycle={"role_rules": [rule(tag)]})
    host = app.extensions["didmos"]

    def broken(*args, **kwargs):
        raise RuntimeError("outbox down")

    host.service("lifecycle").submit = broken
    with caplog.at_level(logging.ERROR, logger="didmos.lifecycle"):
        response = app.test_client().post("/scim/v2/Users", headers=ADMIN, json={
            "schemas": [USER], "userName": f"f-{tag}", "name": {"givenName": "F", "familyName": "G"}})
    assert response.status_code == 201
    assert any("not submitted" in r.message for r in caplog.records)


def test_a_bad_rule_filter_stops_the_start_naming_the_rule(make_app):
    with pytest.raises(ConfigError, match="'broken-rule'.*not an LDAP filter"):
        make_app(lifecycle={"role_rules": [{"name": "broken-rule", "filter": "(title=Teacher", "roles": ["x"]}]})


def test_the_sweeps_date_filters_are_indexed(didmos_slapd):
    """didmosEndDate (<=, >=) and didmosDeactivatedAt (<=) have equality indexes, which back-mdb also uses
    for ordering filters on GeneralizedTime (migration didmos_tasks_lifecycle.0002-lifecycle-indexes)."""
    conn = didmos_slapd.config_connection()
    [(_, database)] = conn.search_s("cn=config", ldap.SCOPE_ONELEVEL, "(olcSuffix=dc=de)", ["olcDbIndex"])
    indexes = {value.decode() for value in database["olcDbIndex"]}
    assert {"didmosEndDate eq", "didmosDeactivatedAt eq"} <= indexes
    applied = conn.search_s("cn=didmos-migrations,dc=de", ldap.SCOPE_ONELEVEL, "(cn=didmos_tasks_lifecycle.*)", ["cn"])
    assert sorted(entry["cn"][0].decode() for _, entry in applied) == [
        "didmos_tasks_lifecycle.0001-lifecycle-schema", "didmos_tasks_lifecycle.0002-lifecycle-indexes"]
