"""``didmos import`` and ``didmos export`` against a real slapd of this module's own.

The commands run as a user runs them: in this process through click's CliRunner, or in a subprocess
(crashes, kills, terminals), configured by a settings file in ``DIDMOS_SETTINGS_FILES``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import ldap
import pytest
from click.testing import CliRunner

from didmos_host import hookimpl
from didmos_host.host import Host
from didmos_host.records import Actor
from didmos_host.testing import SUPERADMIN_ID, _directory_overrides, running_slapd
from didmos_scim.transfer_cli import export_command, import_command

PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
GROUPS = "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def settings_file(overrides: dict, path: Path) -> Path:
    path.write_text("".join(
        f"[{namespace}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
        for namespace, values in overrides.items()))
    path.chmod(0o600)
    return path


class Directory:
    """One slapd with what the commands need to reach it, and ways to look at it."""

    def __init__(self, overrides: dict, settings: Path):
        self.overrides = overrides
        self.settings = settings
        self.env = {"DIDMOS_SETTINGS_FILES": str(settings)}
        self.host = Host.create(overrides)
        self.scim = self.host.service("scim")
        self.admin = Actor(dn=f"didmosUUID={SUPERADMIN_ID},{PEOPLE}", uuid=SUPERADMIN_ID)

    def run(self, command, *args: str):
        """The command in this process, as the shell would run it; a traceback fails the test."""
        result = CliRunner().invoke(command, [str(a) for a in args], env=self.env, catch_exceptions=False)
        assert "Traceback" not in result.output + result.stderr
        return result

    def subprocess(self, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "didmos_host.cli", *map(str, args)],
                              env={**os.environ, **self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=120, **kwargs)

    def users(self, prefix: str) -> dict[str, dict]:
        """userName -> resource of the users whose userName starts with ``prefix``."""
        page = self.scim.list("User", self.admin, base_url="", filter_text=f'userName sw "{prefix}"', count=1000)
        return {r["userName"]: r for r in page.resources}

    def groups(self, prefix: str) -> dict[str, dict]:
        page = self.scim.list("Group", self.admin, base_url="", filter_text=f'displayName sw "{prefix}"', count=1000)
        return {r["displayName"]: r for r in page.resources}

    def count(self, base: str, ldap_filter: str) -> int:
        conn = ldap.initialize(self.overrides["directory"]["uri"])
        conn.simple_bind_s("cn=didmos-service,ou=system,dc=didmos,dc=de", self.overrides["directory"]["bind_password"])
        try:
            return len(conn.search_s(base, ldap.SCOPE_SUBTREE, ldap_filter, ["1.1"]))
        finally:
            conn.unbind_s()


@pytest.fixture(scope="module")
def own(didmos_own_overrides, tmp_path_factory) -> Directory:
    return Directory(didmos_own_overrides, settings_file(didmos_own_overrides,
                                                         tmp_path_factory.mktemp("settings") / "settings.toml"))


@pytest.fixture
def prefix() -> str:
    """A userName prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:6]}-"


def ssha(password: str) -> str:
    import base64
    import hashlib

    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def jsonl(path: Path, resources: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in resources))


# -- each format ------------------------------------------------------------------------------------------


def test_csv_columns_are_scim_paths(own, tmp_path, prefix):
    rows = [
        ["id", "userName", "name.givenName", "name.familyName", 'emails[type eq "work"].value',
         'phoneNumbers[type eq "mobile"].value', "phoneNumbers", "active", "department", f"{ENTERPRISE}:costCenter",
         "title", "addresses.locality", "password", "externalId"],
        ["u1", f"{prefix}ann", "Ann", "Lee", "ann@example.org;ann.lee@example.org", "+49 1", "+49 2", "true",
         "R&D", "cc-1", "Engineer", "Berlin", "Secret-123", "ext-1"],
        ["u2", f"{prefix}bob", "Bob", "Ng", "", "", "", "false", "", "", "", "", "", ""],
        ["u3", f"{prefix}semi", "Se", "Mi", "odd\\;name@example.org", "", "", "", "a;b", "", "", "", "", ""],
    ]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    result = own.run(import_command, write(tmp_path / "users.csv", out.getvalue()))
    assert result.exit_code == 0, result.stderr
    assert "imported 3, rejected 0" in result.stdout
    users = own.users(prefix)
    ann = users[f"{prefix}ann"]
    assert ann["name"]["givenName"] == "Ann" and ann["name"]["familyName"] == "Lee"
    assert ann["displayName"] == "Ann Lee"  # derived, as POST /Users derives it
    assert [e["value"] for e in ann["emails"]] == ["ann@example.org", "ann.lee@example.org"]
    assert {(p["type"], p["value"]) for p in ann["phoneNumbers"]} == {("mobile", "+49 1"), ("work", "+49 2")}
    assert ann["active"] is True and users[f"{prefix}bob"]["active"] is False
    assert ann[ENTERPRISE] == {"department": "R&D", "costCenter": "cc-1"}
    assert ann["addresses"] == [{"locality": "Berlin"}]
    assert ann["externalId"] == "ext-1" and ann["title"] == "Engineer"
    # a single-valued cell is taken as it is; in a multi-valued one "\\;" is a semicolon of a value
    assert users[f"{prefix}semi"][ENTERPRISE]["department"] == "a;b"
    assert [e["value"] for e in users[f"{prefix}semi"]["emails"]] == ["odd;name@example.org"]
    # the password went through the SCIM service: the user can bind with it
    own.host.service("directory").bind(f"didmosUUID={ann['id']},{PEOPLE}", "Secret-123")


def test_a_spreadsheet_csv_with_a_byte_order_mark(own, tmp_path, prefix):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffuserName;x\n".replace(";x", ",title").encode() + f"{prefix}bom,Chef\r\n".encode())
    result = own.run(import_command, path)
    assert result.exit_code == 0, result.stderr
    assert own.users(prefix)[f"{prefix}bom"]["title"] == "Chef"


def test_ldif_with_groups_referring_to_users_by_dn(own, tmp_path, prefix):
    old_user, old_boss, old_group = (f"didmosUUID={uuid.uuid4()},{PEOPLE}", f"didmosUUID={uuid.uuid4()},{PEOPLE}",
                                     f"didmosUUID={uuid.uuid4()},{GROUPS}")
    text = f"""version: 1

# the group comes first: it waits for its members
dn: {old_group}
objectClass: didmosGroup
objectClass: didmosObject
cn: {prefix}staff
member: {old_user}
member: {old_boss}
description: all of them

dn: {old_user}
objectClass: inetOrgPerson
objectClass: didmosObject
objectClass: didmosPerson
uid: {prefix}ann
givenName: Ann
sn: Lee
mail: ann@example.org
mobile: +49 1
manager: {old_boss}
userPassword: Secret-123
entryUUID: 7c1b0c8e-4b1c-103f-8d3b-6b1f0f6b6b6b
createTimestamp: 20260101000000Z

dn: {old_boss}
objectClass: inetOrgPerson
objectClass: didmosObject
objectClass: didmosPerson
uid: {prefix}boss
cn: The Boss
sn: Boss
userPassword: {ssha("Boss-pass-1")}
"""
    result = own.run(import_command, write(tmp_path / "data.ldif", text))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "imported 3, rejected 0" in result.stdout
    users = own.users(prefix)
    ann, boss = users[f"{prefix}ann"], users[f"{prefix}boss"]
    assert [(e["value"], e["type"]) for e in ann["emails"]] == [("ann@example.org", "work")]
    assert ann[ENTERPRISE]["manager"]["value"] == boss["id"]
    staff = own.groups(prefix)[f"{prefix}staff"]
    assert {m["value"] for m in staff["members"]} == {ann["id"], boss["id"]}
    assert staff["description"] == "all of them"
    assert ann["id"] not in old_user  # new ids: the create goes through SCIM
    # a clear-text password is hashed by slapd, a hashed one (from slapcat) is kept as it is
    own.host.service("directory").bind(f"didmosUUID={ann['id']},{PEOPLE}", "Secret-123")
    own.host.service("directory").bind(f"didmosUUID={boss['id']},{PEOPLE}", "Boss-pass-1")


@pytest.mark.parametrize("shape", ["ListResponse", "array", "JSON lines"])
def test_scim_json_in_three_shapes(own, tmp_path, prefix, shape):
    resources = [
        {"schemas": [GROUP], "id": "old-group", "displayName": f"{prefix}team",
         "members": [{"value": "old-ann", "type": "User"}, {"value": "old-inner"}]},
        {"schemas": [GROUP], "id": "old-inner", "displayName": f"{prefix}inner", "members": [{"value": "old-ann"}]},
        {"schemas": [USER], "id": "old-ann", "userName": f"{prefix}ann", "name": {"givenName": "Ann", "familyName": "Lee"},
         "meta": {"resourceType": "User", "location": "https://elsewhere/Users/old-ann"}},
        {"userName": f"{prefix}plain"},  # neither schemas nor meta: a User (the default --type)
    ]
    path = tmp_path / "data.json"
    if shape == "ListResponse":
        write(path, json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                                "totalResults": 4, "Resources": resources}, indent=2))
    elif shape == "array":
        write(path, json.dumps(resources, indent=2))
    else:
        jsonl(path, resources)
    result = own.run(import_command, path)
    assert result.exit_code == 0, result.stderr
    users, groups = own.users(prefix), own.groups(prefix)
    assert set(users) == {f"{prefix}ann", f"{prefix}plain"}
    inner, team = groups[f"{prefix}inner"], groups[f"{prefix}team"]
    assert [m["value"] for m in inner["members"]] == [users[f"{prefix}ann"]["id"]]
    assert {(m["value"], m["type"]) for m in team["members"]} == {(users[f"{prefix}ann"]["id"], "User"),
                                                                  (inner["id"], "Group")}


# -- rejected rows ----------------------------------------------------------------------------------------


def test_rejected_rows_are_reported_and_change_nothing(own, tmp_path, prefix):
    own.run(import_command, jsonl(tmp_path / "first.jsonl", [{"userName": f"{prefix}taken"}]))
    resources = [
        {"userName": f"{prefix}ok1"},
        {"userName": f"{prefix}bad", "shoeSize": 44},                       # no such attribute
        {"userName": f"{prefix}taken", "title": "not me"},                 # exists already
        {"userName": f"{prefix}twice", "title": "first"},
        {"userName": f"{prefix}twice", "title": "second"},                 # duplicate within the file
        {"userName": f"{prefix}badbool", "active": "maybe"},               # wrong type
        {"schemas": [GROUP], "displayName": f"{prefix}g", "members": [{"value": "no-such-id"}]},
        {"userName": f"{prefix}ok2"},
    ]
    report = tmp_path / "rejected.csv"
    result = own.run(import_command, jsonl(tmp_path / "mixed.jsonl", resources), "--report", report,
                     "--workers", "1")
    assert result.exit_code == 1
    assert "imported 3, rejected 5" in result.stdout
    rows = {int(r["row"]): r for r in csv.DictReader(report.open())}
    assert set(rows) == {2, 3, 5, 6, 7}
    assert rows[2]["status"] == "400" and "shoeSize" in rows[2]["reason"]
    assert rows[3]["status"] == "409" and f"{prefix}taken" in rows[3]["reason"] and rows[3]["key"] == f"{prefix}taken"
    assert rows[5]["status"] == "409" and rows[5]["line"] == "5"
    assert "active" in rows[6]["reason"] and "maybe" in rows[6]["reason"]
    assert "no-such-id" in rows[7]["reason"] and rows[7]["type"] == "Group"
    users = own.users(prefix)
    assert set(users) == {f"{prefix}taken", f"{prefix}ok1", f"{prefix}ok2", f"{prefix}twice"}
    assert "title" not in users[f"{prefix}taken"] and users[f"{prefix}twice"]["title"] == "first"
    assert own.groups(prefix) == {}


def test_a_user_without_the_right_is_refused_by_the_pdp(own, tmp_path, prefix):
    own.run(import_command, jsonl(tmp_path / "clerk.jsonl", [{"userName": f"{prefix}clerk"}]))  # a standarduser
    report = tmp_path / "rejected.jsonl"
    result = own.run(import_command, jsonl(tmp_path / "more.jsonl", [{"userName": f"{prefix}a"}, {"userName": f"{prefix}b"}]),
                     "--as", f"{prefix}clerk", "--report", report)
    assert result.exit_code == 1
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted((r["row"], r["status"]) for r in lines) == [(1, 403), (2, 403)]
    assert all("not allowed to create User" in r["reason"] for r in lines)
    assert set(own.users(prefix)) == {f"{prefix}clerk"}
    # the export as the clerk shows only the clerk: what the PDP lets it read
    exported = own.run(export_command, "--as", f"{prefix}clerk", "--type", "User")
    assert exported.exit_code == 0
    assert [r["userName"] for r in json.loads(exported.stdout)["Resources"]] == [f"{prefix}clerk"]


def test_bad_usage_is_one_clear_line_and_exit_status_2(own, tmp_path, prefix):
    cases = [
        (["--format", "csv"], "userName,shoeSize\nx,1\n", "CSV column 'shoeSize'"),
        (["--format", "csv"], "userName,groups\nx,1\n", "groups is read-only"),
        (["--format", "csv"], "userName,name\nx,1\n", "name.givenName"),
        (["--format", "scim"], "[{\"userName\": ", "not JSON"),
        (["--format", "scim", "--as", "nobody-at-all"], "[]", "--as nobody-at-all"),
        (["--format", "scim", "--type", "Gadget"], "[]", "--type Gadget"),
        (["--format", "scim", "--resume"], "[]", "no state file"),
        ([], "x", "cannot tell the format"),
        (["--format", "csv"], "userName\nj\xfcrgen\n".encode("latin-1"), "not UTF-8"),
    ]
    for number, (options, content, message) in enumerate(cases):
        path = tmp_path / f"case{number}.txt"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        result = own.run(import_command, path, *options)
        assert result.exit_code == 2, (options, result.stdout, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    # a finished run's state file stops a second run that would create everything again
    path = jsonl(tmp_path / "once.jsonl", [{"userName": f"{prefix}once"}])
    assert own.run(import_command, path).exit_code == 0
    again = own.run(import_command, path)
    assert again.exit_code == 2 and "--resume" in again.stderr
    assert own.run(import_command, path, "--resume").exit_code == 0
    assert list(own.users(prefix)) == [f"{prefix}once"]


def test_update_mode_changes_only_the_given_attributes(own, tmp_path, prefix):
    own.run(import_command, jsonl(tmp_path / "a.jsonl", [
        {"userName": f"{prefix}ann", "title": "Engineer", "name": {"givenName": "Ann", "familyName": "Lee"}}]))
    path = write(tmp_path / "b.csv", f"userName,title\n{prefix}ann,Chief\n{prefix}new,Intern\n")
    result = own.run(import_command, path, "--update")
    assert result.exit_code == 0 and "imported 1, updated 1" in result.stdout
    users = own.users(prefix)
    assert users[f"{prefix}ann"]["title"] == "Chief" and users[f"{prefix}ann"]["name"]["givenName"] == "Ann"
    assert users[f"{prefix}new"]["title"] == "Intern"


# -- resuming -----------------------------------------------------------------------------------------------


def many_users(path: Path, prefix: str, count: int) -> Path:
    return jsonl(path, [{"userName": f"{prefix}{i:04d}", "name": {"givenName": "N", "familyName": f"{i}"}}
                        for i in range(count)])


@pytest.mark.parametrize("point", ["after-add", "after-done"])
def test_resume_after_a_crash_imports_every_row_once(own, tmp_path, prefix, point):
    # 120 rows, the crash at the 70th: past the first uniqueness check of a batch (50 rows here), so some
    # rows are done, some added and not yet checked, some never sent
    path = many_users(tmp_path / "users.jsonl", prefix, 120)
    crashed = own.subprocess("import", path, "--workers", "3",
                             env={"DIDMOS_IMPORT_CRASH": f"{point}:70", "DIDMOS_IMPORT_CONFIRM_BATCH": "50"})
    assert crashed.returncode == 70, crashed.stderr
    assert 70 <= len(own.users(prefix)) < 120
    resumed = own.run(import_command, path, "--resume", "--workers", "3")
    assert resumed.exit_code == 0, resumed.stderr
    assert "rejected 0" in resumed.stdout and "skipped (done before)" in resumed.stdout
    if point == "after-add":
        assert "found done" in resumed.stdout  # the row added but not recorded was found, not created again
    assert sorted(own.users(prefix)) == [f"{prefix}{i:04d}" for i in range(120)]
    assert own.count(PEOPLE, f"(uid={prefix}*)") == 120


def test_resume_after_sigkill(own, tmp_path, prefix):
    path = many_users(tmp_path / "users.jsonl", prefix, 400)
    state = tmp_path / "users.state"
    process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "import", str(path), "--state", str(state)],
                               env={**os.environ, **own.env, "DIDMOS_IMPORT_CONFIRM_BATCH": "50"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not state.exists() or state.read_text().count('"done"') < 50:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert len(own.users(prefix)) < 400
    resumed = own.run(import_command, path, "--state", state, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert own.count(PEOPLE, f"(uid={prefix}*)") == 400


# -- export ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory, didmos_redis):
    """A directory of its own with users (all kinds of attributes), a manager, groups and nested groups."""
    root = tmp_path_factory.mktemp("source")
    with running_slapd(root / "slapd") as server:
        overrides = {**_directory_overrides(server), "redis": {"url": didmos_redis.url}}
        directory = Directory(overrides, settings_file(overrides, root / "settings.toml"))
        resources = [
            {"id": "boss", "userName": "rt-boss", "name": {"givenName": "Bo", "familyName": "Ss"}},
            {"id": "ann", "userName": "rt-ann", "name": {"givenName": "Ann", "familyName": "Lee", "middleName": "M"},
             "emails": [{"value": "ann@example.org", "type": "work"}, {"value": "a2@example.org", "type": "work"}],
             "phoneNumbers": [{"value": "+49 1", "type": "mobile"}, {"value": "+49 2", "type": "work"}],
             "title": "Engineer; senior", "active": False, "externalId": "ext-ann", "preferredLanguage": "de",
             "addresses": [{"locality": "Berlin", "postalCode": "10115"}],
             ENTERPRISE: {"department": "R&D", "manager": {"value": "boss"}}},
            {"id": "g-inner", "schemas": [GROUP], "displayName": "rt-inner", "members": [{"value": "ann"}]},
            {"id": "g-outer", "schemas": [GROUP], "displayName": "rt-outer", "description": "both",
             "members": [{"value": "g-inner"}, {"value": "boss"}]},
            {"schemas": ["urn:didmos:params:scim:schemas:core:2.0:Organization"], "name": "rt-org",
             "description": "an organization"},
        ]
        result = directory.run(import_command, jsonl(root / "data.jsonl", resources))
        assert result.exit_code == 0, result.stderr
        yield directory


def normalized(directory: Directory) -> list[dict]:
    """Every resource without ids and meta, references as userName/displayName: comparable across directories."""
    exported = json.loads(directory.run(export_command).stdout)["Resources"]
    names = {r["id"]: r.get("userName") or r.get("displayName") or r.get("name") for r in exported}
    out = []
    for resource in exported:
        resource = {k: v for k, v in resource.items() if k not in ("id", "meta")}
        for member in resource.get("members", []):
            member["value"] = names[member.pop("value")]
            member.pop("$ref", None)
        for group in resource.get("groups", []):
            group["value"] = names[group.pop("value")]
            group.pop("$ref", None)
        manager = resource.get(ENTERPRISE, {}).get("manager")
        if manager:
            manager["value"] = names[manager["value"]]
            manager.pop("$ref", None)
        out.append(resource)
    return sorted(out, key=json.dumps)


@pytest.mark.parametrize("fmt", ["scim", "ldif", "csv"])
def test_export_reimports_into_an_empty_directory(source, tmp_path, didmos_redis, fmt):
    files = []
    if fmt == "csv":  # one type per CSV file
        for type_name in ("User", "Organization", "Group"):
            files.append(tmp_path / f"{type_name}.csv")
            result = source.run(export_command, "--type", type_name, "-o", files[-1])
            assert result.exit_code == 0, result.stderr
    else:
        files.append(tmp_path / f"all.{fmt}")
        result = source.run(export_command, "--format", fmt, "-o", files[0])
        assert result.exit_code == 0, result.stderr
        assert "exported 3 User, 1 Organization, 2 Group" in result.stderr
    with running_slapd(tmp_path / "target") as server:
        overrides = {**_directory_overrides(server), "redis": {"url": didmos_redis.url}}
        target = Directory(overrides, settings_file(overrides, tmp_path / "target.toml"))
        for path in files:
            report = tmp_path / f"{path.name}.rejected.jsonl"
            # CSV: one file per type; the groups' members are the ids the users' import made
            options = ["--type", path.stem, *(["--ids-from", f"{files[0]}.import-state"] if path.stem == "Group"
                                              else [])] if fmt == "csv" else []
            result = target.run(import_command, path, "--report", report, *options)
            rejected = [json.loads(line) for line in report.read_text().splitlines()]
            # the target has a superadmin of its own: the exported one is the only row refused
            if fmt != "csv" or path.stem == "User":
                assert result.exit_code == 1, result.stderr
                assert [(r["key"], r["status"]) for r in rejected] == [("superadmin", 409)]
            else:
                assert result.exit_code == 0 and rejected == []
        assert normalized(target) == normalized(source)


def test_export_filter_and_types(source, tmp_path):
    result = source.run(export_command, "--type", "User", "--filter", 'userName sw "rt-a"', "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["userName"] for r in rows] == ["rt-ann"]
    assert rows[0]['emails[type eq "work"].value'] == "ann@example.org;a2@example.org"
    assert rows[0]["title"] == "Engineer; senior"
    # a filter on an attribute one of the types lacks selects from the others
    every_type = source.run(export_command, "--filter", 'userName eq "rt-boss"')
    assert [r.get("userName") for r in json.loads(every_type.stdout)["Resources"]] == ["rt-boss"]
    bad = source.run(export_command, "--filter", 'shoeSize eq "44"')
    assert bad.exit_code == 2 and "shoeSize" in bad.stderr
    csv_two = source.run(export_command, "--format", "csv", "--type", "User", "--type", "Group")
    assert csv_two.exit_code == 2 and "one --type" in csv_two.stderr


# -- the progress bar -------------------------------------------------------------------------------------------


def test_progress_bar_only_on_a_terminal(own, tmp_path, prefix):
    on_pipe = own.subprocess("import", many_users(tmp_path / "a.jsonl", prefix + "p", 30))
    assert on_pipe.returncode == 0 and "importing" not in on_pipe.stderr and on_pipe.stderr == ""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "import",
                                    str(many_users(tmp_path / "b.jsonl", prefix + "t", 30))],
                                   env={**os.environ, **own.env}, stdout=subprocess.PIPE, stderr=terminal)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(controller)
    assert process.returncode == 0
    assert b"importing b.jsonl" in seen and b"30/30" in seen and b"[####" in seen
    assert b"imported 30" in stdout


def test_a_directory_that_goes_away_stops_the_run_and_resume_finishes_it(tmp_path, didmos_redis, prefix):
    with running_slapd(tmp_path / "slapd") as server:
        overrides = {**_directory_overrides(server), "redis": {"url": didmos_redis.url},
                     "ldap": {"retry_seconds": 0.5}}
        directory = Directory(overrides, settings_file(overrides, tmp_path / "settings.toml"))
        path = many_users(tmp_path / "users.jsonl", prefix, 300)
        state = tmp_path / "users.state"
        process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "import", str(path), "--state", str(state)],
                                   env={**os.environ, **directory.env, "DIDMOS_IMPORT_CONFIRM_BATCH": "20"},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not state.exists() or state.read_text().count('"done"') < 40:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.stop()
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 3, stderr
        assert stderr.startswith("didmos import: stopped: directory un") and "--resume" in stderr
        assert "Traceback" not in stderr
        server.start()
        resumed = directory.run(import_command, path, "--state", state, "--resume")
        assert resumed.exit_code == 0, resumed.stderr
        assert directory.count(PEOPLE, f"(uid={prefix}*)") == 300


def test_an_unreachable_directory_is_one_line(own, tmp_path):
    from didmos_host.servers import free_port

    overrides = {**own.overrides, "directory": {**own.overrides["directory"], "uri": f"ldap://127.0.0.1:{free_port()}"},
                 "ldap": {"retry_seconds": 0.2}}
    settings = settings_file(overrides, tmp_path / "settings.toml")
    path = jsonl(tmp_path / "u.jsonl", [{"userName": "nobody-here"}])
    for command, args in ((import_command, [path]), (export_command, [])):
        result = CliRunner().invoke(command, [str(a) for a in args], env={"DIDMOS_SETTINGS_FILES": str(settings)})
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"didmos {command.name}: error: directory unreachable")
        assert result.stderr.count("\n") == 1 and isinstance(result.exception, SystemExit)


def test_export_pages_through_everything(own, tmp_path, prefix):
    own.run(import_command, many_users(tmp_path / "u.jsonl", prefix, 25))
    total = own.scim.list("User", own.admin, base_url="", count=0).total
    # seven entries per LDAP page: the export reads page after page and writes as it goes
    result = CliRunner().invoke(export_command, ["--type", "User", "--format", "csv"],
                                env={**own.env, "DIDMOS_LDAP__PAGE_SIZE": "7"}, catch_exceptions=False)
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == total > 25 and len({r["id"] for r in rows}) == total
    assert f"exported {total} User" in result.stderr


# -- what a row costs: the subject once, no read-back, uniqueness checked in batches --------------------------

#: The Relax control (draft-zeilenga-ldap-relax): slapo-unique lets such an add through, which is how these
#: tests put a second holder of one userName in the directory, as two adds at the same moment can.
RELAX = ldap.controls.RequestControl("1.3.6.1.4.1.4203.666.5.12", True)


@pytest.fixture(scope="module")
def racing(tmp_path_factory, didmos_redis):
    """A directory of its own and its server (rootdn connections for the rival adds)."""
    root = tmp_path_factory.mktemp("racing")
    with running_slapd(root / "slapd") as server:
        overrides = {**_directory_overrides(server), "redis": {"url": didmos_redis.url}}
        directory = Directory(overrides, settings_file(overrides, root / "settings.toml"))
        directory.server = server
        yield directory


def rival(server, user_name: str) -> str:
    """Another user with ``user_name``, added around slapo-unique (as a concurrent add can slip past it)."""
    dn = f"didmosUUID={uuid.uuid4()},{PEOPLE}"
    conn = server.admin_connection()
    try:
        conn.add_ext_s(dn, [("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson"]),
                            ("didmosUUID", [dn[11:47].encode()]), ("uid", [user_name.encode()]),
                            ("cn", [b"Rival"]), ("sn", [b"Rival"])], serverctrls=[RELAX])
    finally:
        conn.unbind_s()
    return dn


def holders(directory: Directory, user_name: str) -> list[str]:
    conn = directory.server.admin_connection()
    try:
        return [dn for dn, _ in conn.search_s("dc=didmos,dc=de", ldap.SCOPE_SUBTREE, f"(uid={user_name})", ["1.1"])]
    finally:
        conn.unbind_s()


def test_confirm_unique_removes_the_add_that_finds_another_holder(racing, prefix):
    from didmos_host.errors import AlreadyExists

    scim = racing.scim
    kept = scim.add("User", {"userName": f"{prefix}alone"}, racing.admin, verify_unique=False)
    mine = scim.add("User", {"userName": f"{prefix}race"}, racing.admin, verify_unique=False)
    other = rival(racing.server, f"{prefix}RACE")  # another case: userName is unique case-insensitively
    verdicts = scim.confirm_unique([kept, mine], racing.admin)
    assert verdicts[kept.dn] == "kept"
    assert isinstance(verdicts[mine.dn], AlreadyExists) and verdicts[mine.dn].status == 409
    assert f"{prefix}race" in verdicts[mine.dn].message
    assert holders(racing, f"{prefix}race") == [other]  # the later add removed itself; the other stays
    assert holders(racing, f"{prefix}alone") == [kept.dn]
    # two adds that each see the other both give way, and both are to be added again
    first = scim.add("User", {"userName": f"{prefix}both"}, racing.admin, verify_unique=False)
    second = rival(racing.server, f"{prefix}both")
    from didmos_scim.service import Created

    verdicts = scim.confirm_unique([first, Created("x", second, "uid", f"{prefix}both")], racing.admin)
    assert verdicts == {first.dn: "retry", second: "retry"}
    assert holders(racing, f"{prefix}both") == []


class Rival:
    """After the import's add of ``user_name``, another entry with that userName appears (the race the
    check after the add is for); with ``yields`` it disappears again when the import's entry does."""

    def __init__(self, server, user_name: str, yields: bool = False):
        self.server, self.user_name, self.yields = server, user_name, yields
        self.dn: str | None = None

    @hookimpl
    def didmos_ldap_post_operation(self, operation, result, actor):
        uid = (operation.attributes or {}).get("uid") if operation.kind == "add" else None
        if uid == [self.user_name.encode()] and self.dn is None:
            self.dn = rival(self.server, self.user_name)
        elif operation.kind == "delete" and self.yields and self.dn and operation.dn != self.dn:
            conn = self.server.admin_connection()
            try:
                conn.delete_s(self.dn)
            finally:
                conn.unbind_s()
            self.yields = False


def run_import(directory: Directory, tmp_path: Path, rows: list[dict], *plugins, workers: int = 2,
               confirm_batch: int | None = None):
    """An ImportRun in this process, on a host with ``plugins`` as well: (summary, report records, run)."""
    from didmos_scim.importer import ImportRun, Report, StateFile
    from didmos_scim.transfer import read_rows
    from didmos_scim.transfer_cli import _types

    host = Host.create(directory.overrides, extra_plugins=plugins)
    path = jsonl(tmp_path / f"rows-{uuid.uuid4().hex[:6]}.jsonl", rows)
    state = StateFile(str(path) + ".state", {"sha256": "-", "format": "scim", "type": None, "update": False},
                      resume=False)
    records: list[dict] = []
    report = Report(None, lambda line: None)
    report.add = records.append
    run = ImportRun(host, directory.admin, state, report, workers=workers, confirm_batch=confirm_batch)
    try:
        summary = run.run(read_rows(str(path), "scim", _types(host, None), None))
    finally:
        state.close()
    return summary, records, run


@pytest.mark.parametrize("yields", [False, True], ids=["other-stays", "both-gave-way"])
def test_import_keeps_one_holder_when_an_add_races_with_its_row(racing, tmp_path, prefix, yields):
    """A concurrent add of a row's userName after slapo-unique's check: the batched check after the adds
    removes the row's entry and rejects the row (409), or, when the other entry gave way too, adds it again."""
    rows = [{"userName": f"{prefix}{i}"} for i in range(7)]
    plugin = Rival(racing.server, f"{prefix}3", yields=yields)
    summary, records, _ = run_import(racing, tmp_path, rows, plugin)
    if yields:
        assert (summary.imported, summary.rejected) == (7, 0), records
        assert len(holders(racing, f"{prefix}3")) == 1 and plugin.dn not in holders(racing, f"{prefix}3")
    else:
        assert (summary.imported, summary.rejected) == (6, 1)
        assert [(r["row"], r["status"]) for r in records] == [(4, 409)] and "is taken" in records[0]["reason"]
        assert holders(racing, f"{prefix}3") == [plugin.dn]
    for i in (0, 1, 2, 4, 5, 6):
        assert len(holders(racing, f"{prefix}{i}")) == 1


class AddsInFlight:
    """Counts the import's adds under way when each uniqueness check (a search of userNames) starts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.adding = 0
        self.checks: list[tuple[int, int]] = []  # (adds in flight, userNames searched) per check

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        with self.lock:
            if operation.kind == "add":
                self.adding += 1
            elif operation.kind == "search" and operation.attributes == ["uid"] and "(uid=" in str(operation.filter):
                self.checks.append((self.adding, str(operation.filter).count("(uid=")))

    @hookimpl
    def didmos_ldap_post_operation(self, operation, result, actor):
        if operation.kind == "add":
            with self.lock:
                self.adding -= 1


def test_the_uniqueness_check_runs_per_batch_while_no_add_is_in_flight(racing, tmp_path, prefix):
    """The check after the adds waits for confirm_batch rows and for the adds in flight: a search among
    the adds made slapd's work per add dearer (bench/README.md, import.py)."""
    from didmos_scim import importer

    assert importer.CONFIRM_BATCH == 1000
    probe = AddsInFlight()
    summary, records, run = run_import(racing, tmp_path, [{"userName": f"{prefix}{i}"} for i in range(45)], probe,
                                       workers=3, confirm_batch=10)
    assert (summary.imported, summary.rejected) == (45, 0), records
    assert run.confirm_batch == 10
    assert probe.checks and all(adding == 0 for adding, _ in probe.checks), probe.checks
    searched = [names for _, names in probe.checks]
    assert sum(searched) == 45 and all(names >= 10 for names in searched[:-1]), searched
    assert len(searched) <= 5  # every 10 rows or a few more (those in flight at the time), and the rest
    assert len(racing.users(prefix)) == 45


def test_the_confirm_batch_is_read_from_the_environment(racing, tmp_path, prefix, monkeypatch):
    monkeypatch.setenv("DIDMOS_IMPORT_CONFIRM_BATCH", "7")
    probe = AddsInFlight()
    summary, _, run = run_import(racing, tmp_path, [{"userName": f"{prefix}{i}"} for i in range(20)], probe)
    assert summary.imported == 20 and run.confirm_batch == 7
    assert len(probe.checks) >= 2 and all(adding == 0 for adding, _ in probe.checks)
    monkeypatch.setenv("DIDMOS_IMPORT_CONFIRM_BATCH", "many")  # not a number: the default
    _, _, run = run_import(racing, tmp_path, [{"userName": f"{prefix}x"}])
    assert run.confirm_batch == 1000


class ActorReads:
    """Counts the reads of one entry (the acting user's roles)."""

    def __init__(self, dn: str):
        self.dn, self.count = dn.lower(), 0

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        if operation.kind == "search" and operation.dn.lower() == self.dn and operation.scope == ldap.SCOPE_BASE:
            self.count += 1


def test_the_actors_roles_are_read_once_per_refresh_and_a_change_takes_effect(racing, tmp_path, prefix):
    conn = racing.server.admin_connection()
    reads = ActorReads(racing.admin.dn)
    summary, _, run = run_import(racing, tmp_path, [{"userName": f"{prefix}a{i}"} for i in range(30)], reads)
    assert summary.imported == 30
    assert run.subject_seconds == 1.0  # pdp.refresh_seconds
    assert 1 <= reads.count <= 3  # once, and again each second the run takes (it takes about one)

    # an admin of its own, whose role goes away after the fifth row: later rows are denied
    admin = Host.create(racing.overrides).service("scim").create(
        "User", {"userName": f"{prefix}admin"}, racing.admin, base_url="")[1]
    superadmin = "cn=superadmin,ou=roles,ou=rbac,ou=default-tenant,dc=didmos,dc=de".encode()
    conn.modify_s(admin.dn, [(ldap.MOD_ADD, "didmosRoleAssignment", [superadmin])])
    from didmos_scim.importer import ImportRun, Report, StateFile
    from didmos_scim.transfer import read_rows
    from didmos_scim.transfer_cli import _types

    host = Host.create(racing.overrides)
    path = jsonl(tmp_path / "later.jsonl", [{"userName": f"{prefix}b{i}"} for i in range(10)])
    state = StateFile(str(path) + ".state", {"sha256": "-", "format": "scim", "type": None, "update": False},
                      resume=False)
    records: list[dict] = []
    report = Report(None, lambda line: None)
    report.add = records.append
    run = ImportRun(host, Actor(dn=admin.dn, uuid=admin.first("didmosUUID")), state, report, workers=1)
    run.subject_seconds = 3600.0

    def rows():
        for row in read_rows(str(path), "scim", _types(host, None), None):
            if row.number == 6:
                conn.modify_s(admin.dn, [(ldap.MOD_DELETE, "didmosRoleAssignment", [superadmin])])
                run.subject_seconds = 0.0  # as if pdp.refresh_seconds had passed
            yield row

    summary = run.run(rows())
    state.close()
    conn.unbind_s()
    denied = sorted(r["row"] for r in records)
    assert all(r["status"] == 403 for r in records)
    assert denied[-5:] == [6, 7, 8, 9, 10] and len(denied) <= 6  # row 5 may have been sent before the change
    assert {f"{prefix}b{i}" for i in range(4)} <= set(racing.users(f"{prefix}b"))


def test_resume_checks_the_uniqueness_of_rows_added_before_the_crash(racing, tmp_path, prefix):
    """A row added but not yet checked when the process died: resuming makes the check after the add;
    another holder of its userName that appeared meanwhile keeps it, and the row is refused."""
    path = many_users(tmp_path / "users.jsonl", prefix, 20)
    state = tmp_path / "users.state"
    crashed = racing.subprocess("import", path, "--state", state, "--workers", "1",
                                env={"DIDMOS_IMPORT_CRASH": "after-add:10"})
    assert crashed.returncode == 70, crashed.stderr
    records = [json.loads(line) for line in state.read_text().splitlines()[1:]]
    started = {r["row"] for r in records if r["state"] == "started"} - {r["row"] for r in records if r["state"] == "done"}
    assert 10 in started  # the 10th add: sent, not checked, not done
    user_name = f"{prefix}{9:04d}"
    other = rival(racing.server, user_name)
    resumed = racing.run(import_command, path, "--state", state, "--resume", "--report", tmp_path / "r.jsonl")
    assert resumed.exit_code == 1 and "rejected 1" in resumed.stdout, resumed.stdout
    [record] = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert (record["row"], record["status"]) == (10, 409)
    assert holders(racing, user_name) == [other]
    assert racing.count(PEOPLE, f"(uid={prefix}*)") == 20


def test_confirm_unique_reports_a_removal_an_interceptor_refuses(racing, prefix):
    """As in _add_unique: when the entry cannot remove itself, the add fails with the reason."""
    from didmos_host.errors import Forbidden

    class NoDeletes:
        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            if operation.kind == "delete":
                raise Forbidden("deletes are switched off")

    scim = Host.create(racing.overrides, extra_plugins=[NoDeletes()]).service("scim")
    mine = scim.add("User", {"userName": f"{prefix}stuck"}, racing.admin, verify_unique=False)
    other = rival(racing.server, f"{prefix}stuck")
    verdict = scim.confirm_unique([mine], racing.admin)[mine.dn]
    assert isinstance(verdict, Forbidden) and "switched off" in verdict.message
    assert sorted(holders(racing, f"{prefix}stuck")) == sorted([mine.dn, other])
