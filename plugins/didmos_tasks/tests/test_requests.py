"""Requests and approvals over the API, against the real slapd and redis and real rq workers.

Users, groups and roles are made for each test (the session slapd is shared), directly in LDAP or
through the app's own ``rbac_admin`` (so its compiled policy knows them at once). The action runs in
``run_worker(burst=True)`` with a host of its own, as ``didmos worker`` runs it.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass

import ldap
import pytest

from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.records import Actor
from didmos_host.tasks import run_worker
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth
from didmos_tasks.requests import sweep

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
GROUPS = f"ou=groups,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
API = "/tasks/v1/requests"
ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


@dataclass
class User:
    id: str
    dn: str
    auth: dict


@pytest.fixture
def tag():
    return uuid.uuid4().hex[:6]


@pytest.fixture
def make_user(didmos_slapd):
    """``make_user(*roles, manager=None)``: a user with a password, standarduser and ``roles``."""
    conn = didmos_slapd.admin_connection()
    created = []

    def make(*roles, manager: User | None = None) -> User:
        user_id = str(uuid.uuid4())
        dn = f"didmosUUID={user_id},{PEOPLE}"
        password = secrets.token_urlsafe(12)
        attrs = [("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
                 ("uid", [f"r{user_id[:8]}".encode()]), ("cn", [b"x"]), ("sn", [b"x"]),
                 ("didmosUUID", [user_id.encode()]), ("didmosTenant", [b"default-tenant"]),
                 ("userPassword", [password.encode()]),
                 ("didmosRoleAssignment", [f"cn={r},ou=roles,{RBAC}".encode() for r in ("standarduser", *roles)])]
        if manager is not None:
            attrs.append(("manager", [manager.dn.encode()]))
        conn.add_s(dn, attrs)
        created.append(dn)
        return User(user_id, dn, basic_auth(user_id, password))

    yield make
    for dn in reversed(created):
        try:
            conn.delete_s(dn)
        except ldap.NO_SUCH_OBJECT:
            pass


@pytest.fixture
def make_group(didmos_slapd):
    conn = didmos_slapd.admin_connection()

    def make() -> tuple[str, str]:
        group_id = str(uuid.uuid4())
        dn = f"didmosUUID={group_id},{GROUPS}"
        conn.add_s(dn, [("objectClass", [b"didmosGroup", b"didmosObject"]), ("didmosUUID", [group_id.encode()]),
                        ("cn", [f"rg-{group_id[:8]}".encode()])])
        return group_id, dn

    return make


@pytest.fixture
def ldap_admin(didmos_slapd):
    return didmos_slapd.admin_connection()


def app_with(make_app, **workflows):
    return make_app(pdp={"refresh_seconds": 0.2}, requests={"workflows": workflows} if workflows else {})


def work(overrides):
    """A burst worker with a host of its own (one that has not talked to the directory: its work
    horses must not inherit the test's LDAP connections), until the queues are empty."""
    worker = Host.create({**overrides, "pdp": {"refresh_seconds": 0.2}})
    try:
        run_worker(worker, burst=True)
    finally:
        worker.service("directory").close()


def file(client, user, kind, payload, status=201, **extra):
    response = client.post(API, json={"kind": kind, "payload": payload, **extra}, headers=user)
    assert response.status_code == status, response.json
    return response.json


def decide(client, user, request_id, verb="approve", status=200, comment=""):
    response = client.post(f"{API}/{request_id}/{verb}", json={"comment": comment}, headers=user)
    assert response.status_code == status, response.json
    return response.json


def superadmin_dn(app) -> str:
    return app.extensions["didmos"].service("rbac_admin").user_dn(SUPERADMIN_ID)


def same(a: str, b: str) -> bool:
    return a.lower().replace(" ", "") == b.lower().replace(" ", "")


def events(request) -> list[str]:
    return [event["event"] for event in request["history"]]


# -- the whole way ---------------------------------------------------------------------------------------

def test_two_levels_end_to_end_manager_then_superadmin_then_the_worker(make_app, make_user, didmos_overrides, tag):
    app = app_with(make_app)
    client, admin = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    admin.add_role(f"auditor-{tag}")
    manager = make_user()
    user = make_user(manager=manager)

    filed = file(client, user.auth, "assign-role", {"role": f"auditor-{tag}"}, comment="quarterly audit")
    assert filed["state"] == "pending" and (filed["level"], filed["levels"]) == (1, 2)
    assert [same(dn, manager.dn) for dn in filed["awaiting"]] == [True]
    assert same(filed["requester"], user.dn) and same(filed["target"], user.dn)
    assert filed["payload"] == {"user": user.id, "role": f"auditor-{tag}"}
    assert client.get(f"{API}/{filed['id']}", headers=user.auth).json["id"] == filed["id"]
    assert [r["id"] for r in client.get(API, headers=user.auth).json] == [filed["id"]]
    assert filed["id"] in [r["id"] for r in client.get(f"{API}?awaiting=me", headers=manager.auth).json]
    assert filed["id"] not in [r["id"] for r in client.get(f"{API}?awaiting=me", headers=ADMIN).json]

    first = decide(client, manager.auth, filed["id"], comment="fine by me")
    assert (first["state"], first["level"]) == ("pending", 2)
    assert any(same(dn, superadmin_dn(app)) for dn in first["awaiting"])
    assert not any(same(dn, user.dn) for dn in first["awaiting"])  # never one's own approver
    assert filed["id"] in [r["id"] for r in client.get(f"{API}?awaiting=me", headers=ADMIN).json]
    assert filed["id"] not in [r["id"] for r in client.get(f"{API}?awaiting=me", headers=manager.auth).json]

    second = decide(client, ADMIN, filed["id"])
    assert second["state"] == "approved" and second["level"] is None and second["awaiting"] == []
    work(didmos_overrides)

    done = client.get(f"{API}/{filed['id']}", headers=user.auth).json
    assert done["state"] == "done", done
    assert done["outcome"]["status"] == "done" and done["outcome"]["result"]["assigned"] == f"auditor-{tag}"
    assert events(done) == ["filed", "level-started", "level-approved", "level-started", "level-approved",
                            "approved", "done"]
    assert [(d["level"], d["decision"], d["comment"]) for d in done["decisions"]] == [
        (1, "approve", "fine by me"), (2, "approve", "")]
    assert same(done["decisions"][0]["by"], manager.dn) and done["history"][0]["comment"] == "quarterly audit"
    assert f"auditor-{tag}" in admin.assigned_roles(user.dn)

    # idempotent: running the action again (a redelivered job) does nothing
    requests = app.extensions["didmos"].service("requests")
    assert requests.act(filed["id"], None) == {"skipped": "done"}
    assert client.get(f"{API}/{filed['id']}", headers=manager.auth).json["history"] == done["history"]
    decide(client, ADMIN, filed["id"], status=409)  # decided: nothing left to decide


def test_decline_at_level_one_ends_it(make_app, make_user, didmos_overrides, tag):
    app = app_with(make_app)
    client, admin = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    admin.add_role(f"payroll-{tag}")
    manager = make_user()
    user = make_user(manager=manager)
    filed = file(client, user.auth, "assign-role", {"role": f"payroll-{tag}"})

    declined = decide(client, manager.auth, filed["id"], "decline", comment="not in your job")
    assert declined["state"] == "declined" and declined["awaiting"] == []
    last = declined["decisions"][-1]
    assert (last["level"], last["decision"], last["comment"]) == (1, "decline", "not in your job")
    decide(client, ADMIN, filed["id"], status=409)  # level 2 never comes
    decide(client, manager.auth, filed["id"], status=409)
    work(didmos_overrides)
    assert client.get(f"{API}/{filed['id']}", headers=user.auth).json["state"] == "declined"
    assert f"payroll-{tag}" not in admin.assigned_roles(user.dn)


def test_only_a_current_approver_decides_and_only_those_involved_read(make_app, make_user, tag):
    app = app_with(make_app)
    client = app.test_client()
    app.extensions["didmos"].service("rbac_admin").add_role(f"r-{tag}")
    manager, stranger = make_user(), make_user()
    user = make_user(manager=manager)
    filed = file(client, user.auth, "assign-role", {"role": f"r-{tag}"})
    request_id = filed["id"]

    assert client.get(f"{API}/{request_id}").status_code == 401
    assert client.post(f"{API}/{request_id}/approve", json={}).status_code == 401
    assert client.get(f"{API}/{request_id}", headers=stranger.auth).status_code == 403
    decide(client, stranger.auth, request_id, status=403)
    decide(client, stranger.auth, request_id, "decline", status=403)
    decide(client, user.auth, request_id, status=403)  # the requester is no approver of its own request
    decide(client, ADMIN, request_id, status=403)  # level 2's approver, not level 1's
    assert client.get(f"{API}/{request_id}", headers=ADMIN).status_code == 200  # read Request
    assert client.get(f"{API}/{request_id}", headers=manager.auth).status_code == 200  # an approver
    # a body of the wrong shape, from someone who may not decide at all: 403 before 422
    assert client.post(f"{API}/{request_id}/approve", json={"comment": 5}, headers=stranger.auth).status_code == 403
    assert client.post(f"{API}/{request_id}/approve", json={"comment": 5}, headers=manager.auth).status_code == 422

    unknown = str(uuid.uuid4())
    assert client.get(f"{API}/{unknown}", headers=stranger.auth).status_code == 403
    assert client.get(f"{API}/{unknown}", headers=ADMIN).status_code == 404
    assert client.get(f"{API}/not-a-uuid", headers=ADMIN).status_code == 404
    assert client.get(f"{API}?all=true", headers=stranger.auth).status_code == 403
    assert request_id in [r["id"] for r in client.get(f"{API}?all=true&state=pending", headers=ADMIN).json]
    assert client.get(API, headers=stranger.auth).json == []


def test_filing_checks_the_payload_and_who_files_for_whom(make_app, make_user, tag):
    app = app_with(make_app)
    client = app.test_client()
    app.extensions["didmos"].service("rbac_admin").add_role(f"r-{tag}")
    user, other, deputy = make_user(), make_user(), make_user("superadmin")

    assert "known kinds: assign-role, join-group" in file(client, user.auth, "nope", {}, status=400)["detail"]
    assert "payload.role" in file(client, user.auth, "assign-role", {}, status=400)["detail"]
    assert "no role named" in file(client, user.auth, "assign-role", {"role": f"x-{tag}"}, status=400)["detail"]
    assert "no fields ['colour']" in file(client, user.auth, "assign-role", {"role": f"r-{tag}", "colour": 1},
                                          status=400)["detail"]
    unknown_group = file(client, user.auth, "join-group", {"group": str(uuid.uuid4())}, status=400)
    assert "no group with id" in unknown_group["detail"]
    assert file(client, user.auth, "assign-role", {"role": "standarduser"}, status=409)["detail"].endswith("already")
    assert client.post(API, json={"payload": {}}, headers=user.auth).status_code == 422

    # for another user: only with `create` on Request for that user
    file(client, user.auth, "assign-role", {"user": other.id, "role": f"r-{tag}"}, status=403)
    file(client, user.auth, "assign-role", {"user": str(uuid.uuid4()), "role": f"r-{tag}"}, status=403)
    assert "no user with id" in file(client, ADMIN, "assign-role", {"user": str(uuid.uuid4()), "role": f"r-{tag}"},
                                     status=400)["detail"]
    for_other = file(client, ADMIN, "assign-role", {"user": other.id, "role": f"r-{tag}"})
    assert same(for_other["target"], other.dn)
    # the user it is about may read it; without a manager, level 1 falls back to role superadmin, less
    # the requester: another superadmin
    seen = client.get(f"{API}/{for_other['id']}", headers=other.auth).json
    assert seen["level"] == 1 and any(same(dn, deputy.dn) for dn in seen["awaiting"])
    assert not any(same(dn, superadmin_dn(app)) for dn in seen["awaiting"])
    mine = file(client, user.auth, "assign-role", {"role": f"r-{tag}"})
    assert any(same(dn, superadmin_dn(app)) for dn in mine["awaiting"])

    kinds = {kind["name"]: kind for kind in client.get(f"{API}/kinds", headers=user.auth).json}
    assert kinds["assign-role"]["workflow"][0]["approvers"] == {"attribute": "manager", "of": "target"}
    assert kinds["join-group"]["action"] == "didmos.requests.join-group"


# -- time: expiry and escalation -----------------------------------------------------------------------------

def test_a_level_expires_when_its_time_is_over(make_app, make_user, make_group):
    app = app_with(make_app, **{"join-group": [{"approvers": {"role": "superadmin"}, "expire_seconds": 1}]})
    client, host = app.test_client(), app.extensions["didmos"]
    user = make_user()
    group_id, _ = make_group()
    filed = file(client, user.auth, "join-group", {"group": group_id})
    assert filed["deadline"] and filed["payload"]["group_name"].startswith("rg-")
    assert filed["id"] not in sweep(host)["expired"]  # not yet

    time.sleep(1.5)
    assert filed["id"] in sweep(host)["expired"]
    expired = client.get(f"{API}/{filed['id']}", headers=user.auth).json
    assert expired["state"] == "expired" and events(expired)[-1] == "expired" and expired["deadline"] is None
    decide(client, ADMIN, filed["id"], status=409)
    assert filed["id"] not in sweep(host)["expired"]  # once


def test_a_level_escalates_to_another_role_then_the_escalation_approves(make_app, make_user, make_group,
                                                                      didmos_overrides, ldap_admin, tag):
    app = app_with(make_app, **{"join-group": [{"approvers": {"role": f"team-{tag}"}, "expire_seconds": 1,
                                                "escalate_to": {"role": f"boss-{tag}"}}]})
    client, host = app.test_client(), app.extensions["didmos"]
    host.service("rbac_admin").add_role(f"team-{tag}")
    host.service("rbac_admin").add_role(f"boss-{tag}")
    lead, boss, user = make_user(f"team-{tag}"), make_user(f"boss-{tag}"), make_user()
    group_id, group_dn = make_group()
    filed = file(client, user.auth, "join-group", {"group": group_id})
    assert [same(dn, lead.dn) for dn in filed["awaiting"]] == [True]

    time.sleep(1.5)
    assert filed["id"] in sweep(host)["escalated"]
    escalated = client.get(f"{API}/{filed['id']}", headers=user.auth).json
    assert escalated["state"] == "pending" and [same(dn, boss.dn) for dn in escalated["awaiting"]] == [True]
    assert events(escalated)[-1] == "escalated" and escalated["deadline"]
    assert client.get(f"{API}/{filed['id']}", headers=lead.auth).status_code == 200  # still involved
    decide(client, lead.auth, filed["id"], status=409)  # handed over: no longer awaited

    assert decide(client, boss.auth, filed["id"])["state"] == "approved"
    work(didmos_overrides)
    done = client.get(f"{API}/{filed['id']}", headers=boss.auth).json
    assert done["state"] == "done", done
    members = ldap_admin.search_s(group_dn, ldap.SCOPE_BASE, attrlist=["member"])[0][1]["member"]
    assert [same(m.decode(), user.dn) for m in members] == [True]


def test_an_escalated_level_whose_time_is_over_again_expires(make_app, make_user, make_group):
    app = app_with(make_app, **{"join-group": [{"approvers": {"role": "superadmin"}, "expire_seconds": 1,
                                                "escalate_to": {"role": "superadmin"}}]})
    client, host = app.test_client(), app.extensions["didmos"]
    user = make_user()
    filed = file(client, user.auth, "join-group", {"group": make_group()[0]})
    time.sleep(1.5)
    assert filed["id"] in sweep(host)["escalated"]
    time.sleep(1.5)
    assert filed["id"] in sweep(host)["expired"]
    assert events(client.get(f"{API}/{filed['id']}", headers=user.auth).json) == [
        "filed", "level-started", "escalated", "expired"]


# -- rules and concurrency ----------------------------------------------------------------------------------

def test_an_all_level_needs_every_approver(make_app, make_user, didmos_overrides, tag):
    app = app_with(make_app, **{"assign-role": [{"approvers": {"role": f"board-{tag}"}, "rule": "all"}]})
    client, admin = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    admin.add_role(f"board-{tag}")
    admin.add_role(f"r-{tag}")
    first, second, user = make_user(f"board-{tag}"), make_user(f"board-{tag}"), make_user()
    filed = file(client, user.auth, "assign-role", {"role": f"r-{tag}"})
    assert filed["needed"] == 2 and len(filed["awaiting"]) == 2

    half = decide(client, first.auth, filed["id"])
    assert half["state"] == "pending" and [same(dn, second.dn) for dn in half["awaiting"]] == [True]
    assert filed["id"] not in [r["id"] for r in client.get(f"{API}?awaiting=me", headers=first.auth).json]
    decide(client, first.auth, filed["id"], status=409)  # one approval each
    assert decide(client, second.auth, filed["id"])["state"] == "approved"
    work(didmos_overrides)
    assert client.get(f"{API}/{filed['id']}", headers=user.auth).json["state"] == "done"
    assert f"r-{tag}" in admin.assigned_roles(user.dn)


def test_approvers_deciding_at_once_pass_a_level_once(make_app, make_user, tag):
    """Three approvers of a two-of-three level approve at the same moment: every write is conditional on
    the entry as read, so exactly two approvals count, the level passes once, the third gets 409."""
    app = app_with(make_app, **{"assign-role": [{"approvers": {"role": f"board-{tag}"}, "rule": {"n": 2}},
                                                {"approvers": {"role": "superadmin"}}]})
    host = app.extensions["didmos"]
    host.service("rbac_admin").add_role(f"board-{tag}")
    host.service("rbac_admin").add_role(f"r-{tag}")
    board = [make_user(f"board-{tag}") for _ in range(3)]
    user = make_user()
    filed = file(app.test_client(), user.auth, "assign-role", {"role": f"r-{tag}"})
    requests = host.service("requests")
    actors = [Actor(dn=member.dn, uuid=member.id) for member in board]
    start, results = threading.Barrier(3), []

    def approve(actor):
        start.wait()
        try:
            requests.decide(actor, filed["id"], True)
            results.append(200)
        except DidmosError as exc:
            results.append(exc.status)

    threads = [threading.Thread(target=approve, args=(actor,)) for actor in actors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200, 200, 409]
    request = requests.get(filed["id"])
    assert [e["event"] for e in request.history].count("level-approved") == 1
    assert len([d for d in request.decisions if d["level"] == 1]) == 2
    assert request.state == "pending" and request.current.level == 2


# -- the action --------------------------------------------------------------------------------------------

def test_separation_of_duty_broken_at_action_time_fails_the_request_with_the_set(make_app, make_user,
                                                                                 didmos_overrides, tag):
    app = app_with(make_app, **{"assign-role": [{"approvers": {"role": "superadmin"}}]})
    client, admin = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    admin.add_role(f"buyer-{tag}")
    admin.add_role(f"payer-{tag}")
    user = make_user(f"buyer-{tag}")
    filed = file(client, user.auth, "assign-role", {"role": f"payer-{tag}"})
    # the policy changes while the request waits
    admin.create_sod_set(f"purchase-{tag}", [f"buyer-{tag}", f"payer-{tag}"], 2)
    conflict = file(client, user.auth, "assign-role", {"role": f"payer-{tag}"}, status=409)
    assert conflict["context"]["set"] == f"purchase-{tag}"  # checked when filing too

    assert decide(client, ADMIN, filed["id"])["state"] == "approved"
    work(didmos_overrides)
    failed = client.get(f"{API}/{filed['id']}", headers=user.auth).json
    assert failed["state"] == "failed", failed
    assert failed["outcome"]["context"]["set"] == f"purchase-{tag}"
    assert failed["outcome"]["context"]["violating"] == sorted([f"buyer-{tag}", f"payer-{tag}"])
    assert "separation of duty" in failed["outcome"]["message"] and events(failed)[-1] == "failed"
    assert f"payer-{tag}" not in admin.assigned_roles(user.dn)


def test_the_action_rechecks_the_approval_chain(make_app, make_user, ldap_admin, tag):
    """A request set to approved behind didmos's back (straight in LDAP) is not carried out."""
    app = app_with(make_app)
    host = app.extensions["didmos"]
    host.service("rbac_admin").add_role(f"r-{tag}")
    user = make_user()
    filed = file(app.test_client(), user.auth, "assign-role", {"role": f"r-{tag}"})
    ldap_admin.modify_s(host.service("requests").dn(filed["id"]),
                        [(ldap.MOD_REPLACE, "didmosRequestState", [b"approved"])])
    outcome = host.service("requests").act(filed["id"], None)
    assert outcome["status"] == "failed" and "approval chain incomplete" in outcome["message"]
    assert "level 1 has 0 valid approvals of 1 needed" in outcome["message"]
    assert f"r-{tag}" not in host.service("rbac_admin").assigned_roles(user.dn)
    assert host.service("requests").get(filed["id"]).state == "failed"


def test_role_approvers_must_still_hold_their_role_when_the_action_runs(make_app, make_user, tag):
    app = app_with(make_app, **{"assign-role": [{"approvers": {"role": f"board-{tag}"}}]})
    client, host = app.test_client(), app.extensions["didmos"]
    admin = host.service("rbac_admin")
    admin.add_role(f"board-{tag}")
    admin.add_role(f"r-{tag}")
    member, user = make_user(f"board-{tag}"), make_user()
    filed = file(client, user.auth, "assign-role", {"role": f"r-{tag}"})
    assert decide(client, member.auth, filed["id"])["state"] == "approved"
    admin.deassign_user(member.dn, f"board-{tag}")
    outcome = host.service("requests").act(filed["id"], None)
    assert outcome["status"] == "failed" and f"must still hold role 'board-{tag}'" in outcome["message"]


def test_a_wrong_workflow_stops_start_up(make_app):
    with pytest.raises(DidmosError, match=r"requests.workflows.join-group\[0\].rule must be"):
        app_with(make_app, **{"join-group": [{"approvers": {"role": "superadmin"}, "rule": "most"}]})
    with pytest.raises(DidmosError, match=r"escalate_to needs expire_seconds"):
        app_with(make_app, **{"join-group": [{"approvers": {"role": "x"}, "escalate_to": {"role": "y"}}]})
