"""The compiled RBAC policy: hierarchy, scopes, attribute sets, separation of duty, review functions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from didmos_pdp.policy import (OPERATIONS, ActorContext, Permission, Policy, PolicyError, Role, Scope,
                               SeparationOfDutyViolation, SodSet)

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
DEPT_X = f"ou=dept-x,{PEOPLE}"
ANN = f"uid=ann,{DEPT_X}"
BOB = f"uid=bob,{PEOPLE}"


def policy(**extra_sod):
    permissions = {
        "all-users": Permission("all-users", frozenset(OPERATIONS), "User"),
        "read-self": Permission("read-self", frozenset({"read"}), "User", Scope("self")),
        "edit-self": Permission("edit-self", frozenset({"modify-replace"}), "User", Scope("self"),
                                frozenset({"displayName", "telephoneNumber"})),
        "edit-in-role-scope": Permission("edit-in-role-scope", frozenset({"read", "modify-replace"}), "User",
                                         Scope("role"), frozenset({"title"})),
        "read-people": Permission("read-people", frozenset({"read"}), "User", Scope("subtree", PEOPLE)),
        "groups-in-org": Permission("groups-in-org", frozenset({"read", "write"}), "Groups", Scope("organization")),
        "approve": Permission("approve", frozenset({"write"}), "Request"),
        "pay": Permission("pay", frozenset({"write"}), "Payment"),
    }
    roles = {
        "standarduser": Role("standarduser", permissions=frozenset({"read-self", "edit-self"})),
        "secretary-x": Role("secretary-x", juniors=frozenset({"standarduser"}),
                            permissions=frozenset({"edit-in-role-scope"}), scope=DEPT_X),
        "auditor": Role("auditor", juniors=frozenset({"standarduser"}), permissions=frozenset({"read-people"})),
        "org-admin": Role("org-admin", permissions=frozenset({"groups-in-org"})),
        "approver": Role("approver", permissions=frozenset({"approve"})),
        "payer": Role("payer", permissions=frozenset({"pay"})),
        "finance-lead": Role("finance-lead", juniors=frozenset({"approver", "payer"})),
        "superadmin": Role("superadmin", juniors=frozenset({"standarduser"}), permissions=frozenset({"all-users"})),
    }
    sod = {"approve-pay": SodSet("approve-pay", frozenset({"approver", "payer"}), 2, dynamic=False),
           **extra_sod}
    return Policy(roles, permissions, sod)


def test_self_scope_and_attribute_sets():
    p, ann = policy(), ActorContext(ANN)
    assert p.check_access(["standarduser"], "read", "User", ANN, ann)
    assert not p.check_access(["standarduser"], "read", "User", BOB, ann)
    decision = p.check_access(["standarduser"], "modify-replace", "User", ANN, ann)
    assert decision and decision.attributes == {"displayName", "telephoneNumber"}
    assert not p.check_access(["standarduser"], "delete", "User", ANN, ann)


def test_hierarchy_inherits_permissions_and_superadmin_has_all_attributes():
    p, bob = policy(), ActorContext(BOB)
    assert p.check_access(["auditor"], "read", "User", BOB, bob)  # inherited read-self and read-people
    assert p.check_access(["auditor"], "read", "User", ANN, bob)
    assert not p.check_access(["auditor"], "modify-replace", "User", ANN, bob)
    assert p.check_access(["superadmin"], "modify-replace", "User", ANN, bob).attributes is None
    assert p.juniors_of("secretary-x") == {"standarduser"}
    assert p.seniors_of("standarduser") == {"secretary-x", "auditor", "superadmin"}


def test_role_scope_limits_a_role_to_its_subtree():
    p, actor = policy(), ActorContext(BOB)
    assert p.check_access(["secretary-x"], "modify-replace", "User", ANN, actor).attributes == {"title"}
    assert not p.check_access(["secretary-x"], "modify-replace", "User", f"uid=carl,{PEOPLE}", actor)
    # inside its scope and on itself: attributes of both grants
    me = ActorContext(ANN)
    assert p.check_access(["secretary-x"], "modify-replace", "User", ANN, me).attributes == {
        "title", "displayName", "telephoneNumber"}


def test_organization_scope_follows_the_actor():
    p = policy()
    org = f"o=acme,ou=organizations,ou=data,{TENANT}"
    assert p.check_access(["org-admin"], "write", "Groups", f"cn=g,{org}", ActorContext(BOB, organization=org))
    assert not p.check_access(["org-admin"], "write", "Groups", f"cn=g,{org}", ActorContext(BOB))
    assert not p.check_access(["org-admin"], "write", "Groups", f"cn=g,o=other,{TENANT}",
                              ActorContext(BOB, organization=org))


def test_dn_comparison_ignores_case_and_spaces():
    p = policy()
    assert p.check_access(["auditor"], "read", "User", "UID=Ann, OU=Dept-X," + PEOPLE.upper(), ActorContext(BOB))


def test_static_separation_of_duty_counts_inherited_roles():
    p = policy()
    p.check_ssd(["approver"])
    with pytest.raises(SeparationOfDutyViolation) as violation:
        p.check_ssd(["approver", "payer"])
    assert violation.value.detail == {"set": "approve-pay", "kind": "static", "roles": ["approver", "payer"],
                                      "cardinality": 2, "violating": ["approver", "payer"]}
    with pytest.raises(SeparationOfDutyViolation):
        p.check_ssd(["finance-lead"])  # one role, but it inherits both


def test_dynamic_separation_of_duty_and_default_activation():
    p = policy(approve_pay_session=SodSet("approve-pay-session", frozenset({"approver", "payer"}), 2, dynamic=True))
    p.check_dsd(["approver"])
    with pytest.raises(SeparationOfDutyViolation, match="dynamic"):
        p.check_dsd(["approver", "payer"])
    assert p.default_active_roles(["payer", "approver", "unknown"]) == ("approver",)


def test_inconsistent_policies_are_refused():
    with pytest.raises(PolicyError, match="cycle: a > b > a"):
        Policy({"a": Role("a", juniors=frozenset({"b"})), "b": Role("b", juniors=frozenset({"a"}))}, {})
    with pytest.raises(PolicyError, match="unknown roles or permissions"):
        Policy({"a": Role("a", permissions=frozenset({"nope"}))}, {})
    with pytest.raises(PolicyError, match="cardinality"):
        SodSet("s", frozenset({"a", "b"}), 3)
    with pytest.raises(PolicyError, match="unknown operations"):
        Permission("p", frozenset({"fly"}), "User")
    with pytest.raises(PolicyError, match="scope kind"):
        Scope.parse("planet")
    assert Scope.parse("subtree: ou=x,dc=de") == Scope("subtree", "ou=x,dc=de")
    assert str(Scope.parse("subtree:ou=x,dc=de")) == "subtree:ou=x,dc=de"


def test_a_permission_on_any_type_covers_types_registered_later():
    from didmos_pdp.policy import ANY_TYPE

    p = Policy({"admin": Role("admin", permissions=frozenset({"everything"}))},
               {"everything": Permission("everything", frozenset(OPERATIONS), ANY_TYPE)})
    assert p.check_access(["admin"], "delete", "Organization", BOB, ActorContext(BOB))
    assert p.check_access(["admin"], "create", "SomePluginType", PEOPLE, ActorContext(BOB)).attributes is None


def test_review_functions():
    p = policy()
    assert p.role_permissions("auditor") == {"read-people", "read-self", "edit-self"}
    assert p.role_permissions("auditor", inherited=False) == {"read-people"}
    assert p.permission_roles("read-self") == {"standarduser"}
    assert p.authorized_permission_roles("read-self") == {"standarduser", "secretary-x", "auditor", "superadmin"}
    assert p.authorized_roles_of(["secretary-x"]) == {"secretary-x", "standarduser"}
    assert set(p.operations_on(["standarduser"], "User", ANN, ActorContext(ANN))) == {"read", "modify-replace"}
    with pytest.raises(PolicyError, match="no role named 'ghost'"):
        p.role_permissions("ghost")


# -- the compiled view agrees with the standard's definitions, for arbitrary policies -----------------

names = st.sampled_from([f"r{i}" for i in range(6)])


@st.composite
def policies(draw):
    order = [f"r{i}" for i in range(6)]
    roles = {}
    for index, name in enumerate(order):
        # juniors only among later roles: a DAG, as the standard requires
        juniors = draw(st.frozensets(st.sampled_from(order[index + 1:]), max_size=3)) if index < 5 else frozenset()
        roles[name] = Role(name, juniors=juniors, permissions=draw(st.frozensets(st.sampled_from(["p0", "p1", "p2", "p3"]), max_size=2)))
    permissions = {f"p{i}": Permission(f"p{i}", frozenset({OPERATIONS[i]}), "User" if i % 2 else "Groups") for i in range(4)}
    return Policy(roles, permissions)


def naive_authorized(policy, role):
    found, todo = set(), [role]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(policy.roles[current].juniors)
    return found


@settings(max_examples=200, deadline=None)
@given(policies(), st.frozensets(names, max_size=3), st.sampled_from(OPERATIONS[:4]), st.sampled_from(["User", "Groups"]))
def test_check_access_matches_the_definition(p, active, operation, resource_type):
    expected = any(
        operation in p.permissions[perm].operations and p.permissions[perm].resource_type == resource_type
        for role in active for junior in naive_authorized(p, role) for perm in p.roles[junior].permissions
    )
    assert bool(p.check_access(active, operation, resource_type, ANN, ActorContext(ANN))) == expected
    assert p.authorized_roles_of(active) == set().union(*(naive_authorized(p, r) for r in active)) if active else True


@settings(max_examples=100, deadline=None)
@given(policies(), st.frozensets(names, max_size=3), st.sampled_from(["User", "Groups"]))
def test_operations_on_agrees_with_check_access(p, active, resource_type):
    actor = ActorContext(ANN)
    expected = {}
    for operation in OPERATIONS:
        decision = p.check_access(active, operation, resource_type, ANN, actor)
        if decision:
            expected[operation] = decision.attributes
    assert p.operations_on(active, resource_type, ANN, actor) == expected


def test_operations_on_merges_attribute_sets_across_grants():
    p, me = policy(), ActorContext(ANN)
    assert p.operations_on(["secretary-x"], "User", ANN, me) == {
        "read": None, "modify-replace": {"title", "displayName", "telephoneNumber"}}
