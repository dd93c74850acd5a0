"""The standard's administrative, system and review functions against the real slapd."""

import time
import uuid

import ldap
import pytest

from didmos_host.errors import AlreadyExists, Forbidden, NotFound
from didmos_host.host import Host
from didmos_host.records import Actor
from didmos_pdp.policy import PolicyError, SeparationOfDutyViolation

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
SUPERADMIN = Actor(dn=f"didmosUUID=00000000-0000-0000-0000-000000000002,{PEOPLE}",
                   uuid="00000000-0000-0000-0000-000000000002")


@pytest.fixture
def admin(host):
    return host.service("rbac_admin")


@pytest.fixture
def names():
    """Unique role/permission/set names for one test (the session slapd is shared)."""
    tag = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{tag}"


def make_user(host):
    user_uuid = str(uuid.uuid4())
    dn = f"didmosUUID={user_uuid},{PEOPLE}"
    host.service("directory").add(dn, {"objectClass": ["inetOrgPerson", "didmosObject"], "uid": [f"u{user_uuid[:8]}"],
                                       "cn": ["x"], "sn": ["x"], "didmosUUID": [user_uuid]})
    return dn


def test_roles_permissions_and_assignment(admin, host, names):
    clerk, read_people = names("clerk"), names("read-people")
    admin.add_role(clerk, description="reads people", actor=SUPERADMIN)
    admin.add_permission(read_people, ["read"], "User", scope=f"subtree:{PEOPLE}", actor=SUPERADMIN)
    admin.grant_permission(read_people, clerk, actor=SUPERADMIN)
    user = make_user(host)
    admin.assign_user(user, clerk, actor=SUPERADMIN)
    assert admin.assigned_roles(user) == {clerk}
    assert admin.assigned_users(clerk) == [user]
    assert admin.user_permissions(user) == {read_people}
    with pytest.raises(AlreadyExists):
        admin.assign_user(user, clerk)
    with pytest.raises(AlreadyExists):
        admin.add_role(clerk)
    with pytest.raises(NotFound, match="no role named 'ghost'"):
        admin.assign_user(user, "ghost")
    admin.revoke_permission(read_people, clerk)
    assert admin.user_permissions(user) == frozenset()
    admin.deassign_user(user, clerk)
    assert admin.assigned_roles(user) == frozenset()
    admin.delete_role(clerk)
    admin.delete_permission(read_people)
    assert clerk not in host.service("pdp").policy().roles


def test_static_separation_of_duty_is_enforced_on_assignment_inheritance_and_creation(admin, host, names):
    approver, payer, lead, other = names("approver"), names("payer"), names("lead"), names("other")
    for role in (approver, payer, lead, other):
        admin.add_role(role)
    admin.create_sod_set(names("ssd"), [approver, payer], 2)
    user = make_user(host)
    admin.assign_user(user, approver)
    with pytest.raises(SeparationOfDutyViolation) as violation:
        admin.assign_user(user, payer)
    assert violation.value.status == 409 and violation.value.detail["violating"] == sorted([approver, payer])
    assert admin.assigned_roles(user) == {approver}  # nothing was written

    # inheritance: a user holding `other` would inherit both through it
    admin.assign_user(user, other)
    admin.add_inheritance(other, lead)
    with pytest.raises(SeparationOfDutyViolation):
        admin.add_inheritance(lead, payer)  # user -> other -> lead -> payer, and the user has approver
    # a new static set that a user already breaks is refused
    second = make_user(host)
    admin.assign_user(second, other)
    with pytest.raises(SeparationOfDutyViolation):
        admin.create_sod_set(names("ssd2"), [approver, other], 2)


def test_hierarchy_cycles_are_refused(admin, names):
    a, b = names("a"), names("b")
    admin.add_role(a)
    admin.add_role(b)
    admin.add_inheritance(a, b)
    with pytest.raises(PolicyError, match="cycle"):
        admin.add_inheritance(b, a)
    assert admin.pdp.policy().juniors_of(a) == {b}


def test_sessions_with_dynamic_separation_of_duty(admin, host, names):
    teller, auditor = names("teller"), names("auditor")
    admin.add_role(teller)
    admin.add_role(auditor)
    admin.add_permission(names("cash"), ["write"], "Cash", actor=SUPERADMIN)
    admin.grant_permission(names("cash"), teller)
    admin.create_sod_set(names("dsd"), [teller, auditor], 2, dynamic=True)
    user = make_user(host)
    admin.assign_user(user, teller)
    admin.assign_user(user, auditor)  # both assigned: only a dynamic set, so allowed

    session = admin.create_session(user)  # default activation skips what DSD forbids
    _, active = admin.session(session)
    assert len(active) == 1
    with pytest.raises(SeparationOfDutyViolation, match="dynamic"):
        admin.create_session(user, [teller, auditor])
    teller_session = admin.create_session(user, [teller])
    assert admin.check_access(teller_session, "write", "Cash", None)
    with pytest.raises(SeparationOfDutyViolation):
        admin.add_active_role(teller_session, auditor)
    admin.drop_active_role(teller_session, teller)
    assert not admin.check_access(teller_session, "write", "Cash", None)
    admin.add_active_role(teller_session, auditor)
    assert admin.session(teller_session)[1] == {auditor}
    with pytest.raises(Forbidden, match="not authorized"):
        admin.create_session(user, ["superadmin"])
    admin.delete_session(teller_session)
    with pytest.raises(NotFound):
        admin.session(teller_session)


def test_review_functions_follow_the_hierarchy(admin, host, names):
    senior, junior = names("senior"), names("junior")
    admin.add_role(junior)
    admin.add_role(senior)
    admin.add_inheritance(senior, junior)
    user = make_user(host)
    admin.assign_user(user, senior)
    assert admin.authorized_roles(user) == {senior, junior}
    assert admin.authorized_users(junior) == [user] and admin.assigned_users(junior) == []


def test_administration_needs_permissions_and_cannot_escalate(admin, host, names):
    helpdesk, assign = names("helpdesk"), names("assign-roles")
    admin.add_role(helpdesk)
    admin.add_permission(assign, ["write"], "RoleAssignment", scope=f"subtree:{PEOPLE}")
    admin.grant_permission(assign, helpdesk)
    admin.add_inheritance(helpdesk, "standarduser")
    agent_dn, user_dn = make_user(host), make_user(host)
    admin.assign_user(agent_dn, helpdesk)
    agent = Actor(dn=agent_dn, uuid="agent")

    admin.require(agent, "write", "RoleAssignment", user_dn)
    admin.require_no_escalation(agent, roles=["standarduser"])  # it holds it (inherited)
    with pytest.raises(Forbidden, match="do not have themselves"):
        admin.require_no_escalation(agent, roles=["superadmin"])
    admin.require_no_escalation(SUPERADMIN, roles=[helpdesk], permissions=[assign])  # has everything
    plain = Actor(dn=user_dn, uuid="plain")
    admin.assign_user(user_dn, "standarduser")
    with pytest.raises(Forbidden, match="not allowed to write RoleAssignment"):
        admin.require(plain, "write", "RoleAssignment", user_dn)  # not even on itself
    with pytest.raises(Forbidden):
        admin.require(None, "read", "Role")


def test_deassigning_a_role_drops_it_from_the_users_sessions(admin, host, names):
    teller = names("teller")
    admin.add_role(teller)
    admin.add_permission(names("till"), ["write"], "Till")
    admin.grant_permission(names("till"), teller)
    user = make_user(host)
    admin.assign_user(user, teller)
    session = admin.create_session(user, [teller])
    assert admin.check_access(session, "write", "Till", None)
    admin.deassign_user(user, teller)
    assert admin.session(session)[1] == frozenset()
    assert not admin.check_access(session, "write", "Till", None)


def test_a_session_ends_with_its_user_and_with_its_lifetime(admin, host, names, didmos_overrides):
    teller = names("teller")
    admin.add_role(teller)
    user = make_user(host)
    admin.assign_user(user, teller)
    session = admin.create_session(user, [teller])
    host.service("directory").modify(user, [(ldap.MOD_ADD, "objectClass", ["didmosPerson"]),
                                            (ldap.MOD_REPLACE, "didmosActive", ["FALSE"])])
    with pytest.raises(NotFound, match="gone or deactivated"):
        admin.check_access(session, "write", "Till", None)
    with pytest.raises(NotFound, match="no session"):  # and it was deleted
        admin.session(session)
    host.service("directory").modify(user, [(ldap.MOD_REPLACE, "didmosActive", ["TRUE"])])
    deleted_later = admin.create_session(user, [teller])
    host.service("directory").delete(user)
    with pytest.raises(NotFound, match="gone or deactivated"):
        admin.session(deleted_later)

    short = Host.create({**didmos_overrides, "pdp": {"session_lifetime_seconds": 1}})
    try:
        short_admin = short.service("rbac_admin")
        other = make_user(short)
        short_admin.assign_user(other, teller)
        brief = short_admin.create_session(other, [teller])
        assert short_admin.session(brief)[0] == other
        time.sleep(2.1)  # createTimestamp has whole seconds
        with pytest.raises(NotFound, match="expired"):
            short_admin.session(brief)
    finally:
        short.service("directory").close()


def test_a_subtree_scope_must_name_a_dn(admin, names):
    with pytest.raises(PolicyError, match="does not name a valid DN"):
        admin.add_permission(names("broken"), ["read"], "User", scope="subtree:not a dn")
