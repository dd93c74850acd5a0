"""The directory service against the real slapd: operations, controls, errors, interceptors."""

import uuid

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.errors import (AlreadyExists, AuthenticationFailed, ConstraintViolation, NotFound,
                                OperationRejected, PasswordPolicyError, PreconditionFailed)
from didmos_host.host import Host
from didmos_ldap.directory import BASE, ONELEVEL, VERSION_ATTRIBUTES, common_suffix, location, normalize_dn


@pytest.fixture
def directory(make_directory):
    return make_directory()


@pytest.fixture
def branch(directory):
    """A fresh subtree for one test."""
    dn = f"ou=t-{uuid.uuid4().hex[:12]},dc=didmos,dc=de"
    directory.add(dn, {"objectClass": ["organizationalUnit"], "ou": [dn[5:19]]})
    return dn


def person(uid, **extra):
    return {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"], "uid": [uid], "cn": [uid],
            "sn": [uid], "didmosUUID": [str(uuid.uuid4())], **extra}


def test_add_returns_the_stored_entry_without_a_second_search(directory, branch):
    entry = directory.add(f"uid=ann,{branch}", person("ann", didmosActive=[True]),
                          read_back=["uid", "didmosActive", *VERSION_ATTRIBUTES])
    assert entry.dn == f"uid=ann,{branch}"
    assert entry.first("uid") == "ann" and entry.first("didmosActive") == "TRUE"
    assert entry.first("entryCSN") and entry.first("entryUUID")
    assert directory.add(f"uid=bob,{branch}", person("bob")) is None  # without read_back, nothing extra


def test_search_get_and_not_found(directory, branch):
    directory.add(f"uid=cat,{branch}", person("cat", mail=["cat@example.org"]))
    assert [e.dn for e in directory.search(branch, "(uid=cat)")] == [f"uid=cat,{branch}"]
    assert directory.get(f"uid=cat,{branch}", ["mail"]).values("mail") == ["cat@example.org"]
    assert directory.get(f"uid=nobody,{branch}") is None
    assert directory.search(f"ou=missing,{branch}", "(uid=*)") == []


def test_modify_with_post_read_and_if_match(directory, branch):
    dn = f"uid=dan,{branch}"
    created = directory.add(dn, person("dan"), read_back=["entryCSN"])
    csn = created.first("entryCSN")
    changed = directory.modify(dn, [(ldap.MOD_REPLACE, "title", ["boss"])], if_match=f"(entryCSN={csn})",
                               read_back=["title", "entryCSN"])
    assert changed.first("title") == "boss" and changed.first("entryCSN") != csn
    with pytest.raises(PreconditionFailed):  # the version we held is gone: 412, and nothing changes
        directory.modify(dn, [(ldap.MOD_REPLACE, "title", ["intern"])], if_match=f"(entryCSN={csn})")
    assert directory.get(dn, ["title"]).values("title") == ["boss"]
    with pytest.raises(PreconditionFailed):
        directory.delete(dn, if_match=f"(entryCSN={csn})")
    directory.delete(dn, if_match=f"(entryCSN={changed.first('entryCSN')})")
    assert directory.get(dn) is None


def test_if_match_on_a_unique_attribute(directory, branch):
    """slapo-unique's own search fails with the request's assertion; the version is still checked."""
    dn = f"uid=ulla,{branch}"
    csn = directory.add(dn, person("ulla"), read_back=["entryCSN"]).first("entryCSN")
    renamed = directory.modify(dn, [(ldap.MOD_REPLACE, "uid", ["ulla", "ulla2"])], if_match=f"(entryCSN={csn})",
                               read_back=["uid", "entryCSN"])
    assert sorted(renamed.values("uid")) == ["ulla", "ulla2"]
    with pytest.raises(PreconditionFailed):
        directory.modify(dn, [(ldap.MOD_REPLACE, "uid", ["ulla", "ulla3"])], if_match=f"(entryCSN={csn})")
    assert sorted(directory.get(dn, ["uid"]).values("uid")) == ["ulla", "ulla2"]


def test_permissive_modify_makes_membership_changes_idempotent(directory, branch):
    group = f"cn=g,{branch}"
    directory.add(group, {"objectClass": ["groupOfNames"], "cn": ["g"], "member": [f"uid=x,{branch}"]})
    with pytest.raises(ConstraintViolation):
        directory.modify(group, [(ldap.MOD_ADD, "member", [f"uid=x,{branch}"])])
    directory.modify(group, [(ldap.MOD_ADD, "member", [f"uid=x,{branch}", f"uid=y,{branch}"])], permissive=True)
    directory.modify(group, [(ldap.MOD_DELETE, "member", [f"uid=absent,{branch}"])], permissive=True)
    assert sorted(directory.get(group, ["member"]).values("member")) == [f"uid=x,{branch}", f"uid=y,{branch}"]
    # a delete of present and absent values removes the present ones, in the same call
    after = directory.modify(group, [(ldap.MOD_DELETE, "member", [f"UID=Y,{branch}", f"uid=z,{branch}"]),
                                     (ldap.MOD_REPLACE, "description", ["changed"])],
                             permissive=True, read_back=["member", "description"])
    assert after.values("member") == [f"uid=x,{branch}"] and after.values("description") == ["changed"]


def test_errors_are_translated(directory, branch):
    directory.add(f"uid=eve,{branch}", person("eve"))
    with pytest.raises(AlreadyExists):
        directory.add(f"uid=eve,{branch}", person("eve2"))
    with pytest.raises(AlreadyExists, match="non-unique"):  # the unique overlay keeps uid unique
        directory.add(f"cn=eve-again,{branch}", {**person("eve"), "cn": ["eve-again"]})
    with pytest.raises(ConstraintViolation):
        directory.add(f"uid=odd,{branch}", {"objectClass": ["inetOrgPerson"], "uid": ["odd"]})  # no sn, cn
    with pytest.raises(NotFound):
        directory.modify(f"uid=ghost,{branch}", [(ldap.MOD_REPLACE, "title", ["x"])])
    with pytest.raises(NotFound):
        directory.delete(f"uid=ghost,{branch}")


def test_move_and_rename(directory, branch):
    directory.add(f"ou=a,{branch}", {"objectClass": ["organizationalUnit"], "ou": ["a"]})
    directory.add(f"uid=fay,{branch}", person("fay"))
    moved = directory.move(f"uid=fay,{branch}", new_superior=f"ou=a,{branch}", read_back=["uid"])
    assert normalize_dn(moved.dn) == normalize_dn(f"uid=fay,ou=a,{branch}")
    renamed = directory.move(f"uid=fay,ou=a,{branch}", new_rdn="cn=fay")
    assert normalize_dn(renamed) == normalize_dn(f"cn=fay,ou=a,{branch}")
    assert directory.get(f"cn=fay,ou=a,{branch}") is not None


def test_paged_iteration_streams_everything(directory, branch):
    for i in range(23):
        directory.add(f"uid=p{i},{branch}", person(f"p{i}"))
    seen = [e.first("uid") for e in directory.iter_search(branch, "(uid=p*)", attrs=["uid"], page_size=5)]
    assert sorted(seen) == sorted(f"p{i}" for i in range(23))


def test_server_side_sorting(directory, branch):
    for name in ("mia", "abe", "zoe"):
        directory.add(f"uid={name},{branch}", person(name))
    ascending = [e.first("uid") for e in directory.search(branch, "(uid=*)", ONELEVEL, ["uid"], sort=["uid:caseIgnoreOrderingMatch"])]
    descending = [e.first("uid") for e in directory.search(branch, "(uid=*)", ONELEVEL, ["uid"], sort=["-uid:caseIgnoreOrderingMatch"])]
    assert ascending == ["abe", "mia", "zoe"] and descending == ["zoe", "mia", "abe"]


def test_get_many_bundles_lookups(directory, branch):
    dns = [f"uid=m{i},{branch}" for i in range(7)]
    for i, dn in enumerate(dns):
        directory.add(dn, person(f"m{i}"))
    found = directory.get_many([*dns, f"uid=missing,{branch}"], ["uid"], chunk=3)
    assert sorted(e.first("uid") for e in found.values()) == [f"m{i}" for i in range(7)]
    assert normalize_dn(dns[0]) in found


def test_request_scope_runs_identical_searches_once(make_directory, branch):
    seen = []

    class Count:
        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            seen.append((operation.kind, operation.dn))

    directory = make_directory(Count())
    with directory.request_scope():
        first = directory.search(branch, "(ou=*)", BASE)
        second = directory.search(branch, "(ou=*)", BASE)
        assert first is second and seen == [("search", branch)]
        directory.add(f"uid=w,{branch}", person("w"))  # a write forgets what was read
        directory.search(branch, "(ou=*)", BASE)
    assert [kind for kind, _ in seen] == ["search", "add", "search"]


def test_interceptors_see_change_and_reject_operations(make_directory, branch):
    class Stamp:
        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            if operation.kind == "add" and actor is not None:
                operation.attributes["description"] = [f"created by {actor.uuid}".encode()]
            if operation.kind == "delete" and "protected" in operation.dn:
                raise OperationRejected("protected entries cannot be deleted")

        results = []

        @hookimpl
        def didmos_ldap_post_operation(self, operation, result, actor):
            Stamp.results.append((operation.kind, result))

    from didmos_host.records import Actor

    directory = make_directory(Stamp())
    actor = Actor(dn="uid=admin", uuid="42")
    entry = directory.add(f"uid=protected,{branch}", person("protected"), actor=actor, read_back=["description"])
    assert entry.values("description") == ["created by 42"]
    with pytest.raises(OperationRejected):
        directory.delete(f"uid=protected,{branch}", actor=actor)
    assert directory.get(f"uid=protected,{branch}") is not None
    assert Stamp.results[0][0] == "add" and Stamp.results[0][1].dn == f"uid=protected,{branch}"


def test_bind_checks_passwords_and_password_policy(directory, branch, didmos_slapd):
    policy = f"cn=lockout,{branch}"
    directory.add(policy, {"objectClass": ["applicationProcess", "pwdPolicy"], "cn": ["lockout"],
                           "pwdAttribute": ["userPassword"], "pwdMaxFailure": ["2"], "pwdLockout": [True],
                           "pwdMustChange": [True]})
    dn = f"uid=gus,{branch}"
    directory.add(dn, person("gus", userPassword=["right-pw"], pwdPolicySubentry=[policy]))
    assert directory.bind(dn, "right-pw").dn == dn
    with pytest.raises(AuthenticationFailed):
        directory.bind(dn, "")  # never an anonymous bind in disguise
    for _ in range(2):
        with pytest.raises(AuthenticationFailed) as wrong:
            directory.bind(dn, "wrong")
        assert not isinstance(wrong.value, PasswordPolicyError)
    with pytest.raises(PasswordPolicyError) as locked:
        directory.bind(dn, "right-pw")
    assert locked.value.detail == {"state": "locked"}

    reset = f"uid=hal,{branch}"
    directory.add(reset, person("hal", userPassword=["temp-pw"], pwdPolicySubentry=[policy], pwdReset=[True]))
    with pytest.raises(PasswordPolicyError) as must_change:
        directory.bind(reset, "temp-pw")
    assert must_change.value.detail == {"state": "must_change"}


def test_location_and_dn_helpers():
    dn = "didmosUUID=00000000-0000-0000-0000-000000000002,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
    assert location(dn) == [
        {"de": "dc=de"}, {"didmos": "dc=didmos,dc=de"}, {"default-tenant": "ou=default-tenant,dc=didmos,dc=de"},
        {"data": "ou=data,ou=default-tenant,dc=didmos,dc=de"},
        {"people": "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"},
        {"00000000-0000-0000-0000-000000000002": dn},
    ]
    assert common_suffix(["uid=a,ou=x,dc=de", "uid=b,OU=X,dc=de", "uid=c,ou=y,dc=de"]) == "dc=de"
    assert normalize_dn("UID=A, OU=X,dc=de") == "uid=a,ou=x,dc=de"


def test_an_empty_service_password_is_a_configuration_error_not_an_anonymous_bind(make_directory):
    from didmos_host.errors import ConfigError

    directory = make_directory(directory={"bind_password": ""})  # built lazily: no error yet
    with pytest.raises(ConfigError, match="directory.bind_password is empty"):
        directory.search("dc=de", "(objectClass=*)", BASE)


def test_window_pages_a_sorted_result_with_vlv(directory, branch):
    names = [f"w{i:02d}" for i in range(25)]
    for name in reversed(names):
        directory.add(f"uid={name}{branch[5:17]},{branch}", person(f"{name}{branch[5:17]}", displayName=[name]))
    sort = ["displayName:caseIgnoreOrderingMatch"]
    page, total = directory.window(branch, "(uid=w*)", sort, offset=1, count=10, scope=ONELEVEL, attrs=["displayName"])
    assert total == 25 and [e.first("displayName") for e in page] == names[:10]
    page, total = directory.window(branch, "(uid=w*)", sort, offset=21, count=10, scope=ONELEVEL, attrs=["displayName"])
    assert total == 25 and [e.first("displayName") for e in page] == names[20:]
    page, _ = directory.window(branch, "(uid=w*)", ["-" + sort[0]], offset=1, count=3, scope=ONELEVEL,
                               attrs=["displayName"])
    assert [e.first("displayName") for e in page] == ["w24", "w23", "w22"]
    assert directory.window(branch, "(uid=nobody*)", sort, offset=1, count=5, scope=ONELEVEL) == ([], 0)
    page, total, position = directory.window_from(branch, "(uid=w*)", sort[0], at="w05", count=2, scope=ONELEVEL,
                                                  attrs=["displayName"])
    assert [e.first("displayName") for e in page] == ["w05", "w06"] and (total, position) == (25, 6)


def test_many_windows_on_one_connection(make_directory, branch):
    """slapo-sssvlv keeps each sort until its connection closes and refuses a sixth on one connection
    (BUSY): with one pooled connection and no retries, twelve windows in a row still work, because the
    pool closes a connection after its window."""
    directory = make_directory(ldap={"pool_size": 1, "retry_seconds": 0})
    directory.add(f"uid=v1{branch[5:17]},{branch}", person(f"v1{branch[5:17]}"))
    for _ in range(12):
        assert directory.window(branch, "(uid=v1*)", ["uid:caseIgnoreOrderingMatch"], offset=1, count=1,
                                scope=ONELEVEL)[1] == 1


def test_failover_to_the_next_uri(make_directory, didmos_slapd, didmos_overrides):
    from didmos_host.servers import free_port

    directory = make_directory(directory={**didmos_overrides["directory"],
                                          "uri": f"ldap://127.0.0.1:{free_port()} {didmos_slapd.uri}"})
    assert directory.get("dc=de") is not None
    assert directory.pool._preferred == 1  # later operations start with the URI that answered


def test_many_threads_share_the_pool_safely(make_directory, branch):
    import threading

    directory = make_directory(ldap={"pool_size": 3})
    errors, done = [], []

    def work(n):
        try:
            for i in range(15):
                dn = f"cn=t{n}-{i},{branch}"
                directory.add(dn, {"objectClass": ["applicationProcess"], "cn": [f"t{n}-{i}"]})
                assert directory.get(dn, ["cn"]).first("cn") == f"t{n}-{i}"
            done.append(n)
        except Exception as exc:  # collected, asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and sorted(done) == list(range(8))
    assert len(directory.search(branch, "(cn=t*)", ONELEVEL, ["1.1"])) == 8 * 15
    assert directory.pool._open_count <= 3


def test_user_binds_fail_over_too(make_directory, didmos_slapd, didmos_overrides):
    from didmos_host.servers import free_port

    from didmos_host.testing import SUPERADMIN_PASSWORD

    directory = make_directory(directory={**didmos_overrides["directory"],
                                          "uri": f"ldap://127.0.0.1:{free_port()} {didmos_slapd.uri}"})
    admin = "didmosUUID=00000000-0000-0000-0000-000000000002,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
    assert directory.bind(admin, SUPERADMIN_PASSWORD).dn == admin
    assert directory.auth_pool._preferred == 1


def test_entry_matches_attribute_names_in_any_spelling_and_absent_ones_quickly():
    from didmos_ldap.directory import Entry

    entry = Entry("uid=a,dc=x", {"cn": [b"A"], "mailAlternateAddress": [b"a@x"], "objectClass": [b"top"]})
    assert entry.get("cn") == [b"A"] and entry.get("CN") == [b"A"]
    assert entry.get("title") is None and "title" not in entry  # a miss builds the lower-cased index once
    folded = entry._folded
    assert entry.first("MAILALTERNATEADDRESS") == "a@x" and entry.values("objectclass") == ["top"]
    assert entry.get("telephoneNumber") is None and entry.raw("Title") == []
    assert entry._folded is folded  # built once, used for every later miss
    entry.attrs["Title"] = [b"Boss"]  # names added after all the same: the index follows
    assert entry.first("title") == "Boss" and entry.get("cN") == [b"A"]
