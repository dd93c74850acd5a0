"""The didmos_pdp plugin's hook implementations: settings, schema, default roles, the authorize vote."""

from __future__ import annotations

from pathlib import Path

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import DirectoryEntry, SchemaMigration, SettingsNamespace

SCHEMA_DIR = Path(__file__).parent / "schema"

#: The permissions and roles `didmos directory init` creates: documented in docs/pdp.md.
DEFAULT_PERMISSIONS = {
    "tenant-everything": {"operations": ["read", "write", "create", "delete", "modify-add", "modify-del",
                                         "modify-replace"], "resource_type": "*", "scope": "tenant",
                          "description": "Every operation on every entry of the tenant"},
    "self-read": {"operations": ["read"], "resource_type": "User", "scope": "self",
                  "description": "Read one's own entry"},
    "self-edit": {"operations": ["modify-replace", "modify-add", "modify-del"], "resource_type": "User",
                  "scope": "self", "description": "Change some of one's own attributes and one's password",
                  "attributes": ["displayName", "telephoneNumber", "mobile", "preferredLanguage", "didmosLocale",
                                 "didmosTimezone", "userPassword"]},
}
DEFAULT_ROLES = {
    "superadmin": {"permissions": ["tenant-everything"], "juniors": ["standarduser"],
                   "description": "Everything in the tenant"},
    "standarduser": {"permissions": ["self-read", "self-edit"], "juniors": [],
                     "description": "Read one's own entry, change selected own attributes and the password"},
}


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="pdp",
        defaults={"rbac_dn": "ou=rbac,ou=default-tenant,dc=didmos,dc=de", "refresh_seconds": 1.0,
                  "superadmin_roles": ["superadmin", "standarduser"], "new_user_roles": ["standarduser"],
                  "session_lifetime_seconds": 28800},
        validators=(
            Validator("pdp.rbac_dn", is_type_of=str, len_min=3),
            Validator("pdp.refresh_seconds", is_type_of=(int, float), gt=0),
            Validator("pdp.superadmin_roles", is_type_of=list),
            Validator("pdp.new_user_roles", is_type_of=list),
            Validator("pdp.session_lifetime_seconds", is_type_of=int, gte=1),
        ),
        descriptions={
            "rbac_dn": "Where the tenant's roles, permissions, separation-of-duty sets and sessions live.",
            "refresh_seconds": "How stale the in-process policy may be: at most this long after a change on "
                               "another node or directly in LDAP, decisions follow it.",
            "superadmin_roles": "Roles `didmos directory init` assigns to the superadmin it creates.",
            "session_lifetime_seconds": "How long an RBAC session (POST /pdp/v1/sessions) lasts; an older one, "
                                        "or one whose user is gone or deactivated, is deleted when next used.",
            "new_user_roles": "Roles every user created through the API is assigned (in the same LDAP add); "
                              "an empty list leaves new users without roles.",
        },
    )]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_pdp.admin import RbacAdmin
    from didmos_pdp.pdp import PolicyDecisionPoint

    pdp = PolicyDecisionPoint(host)
    host.provide("pdp", pdp)
    host.provide("rbac_admin", RbacAdmin(pdp))


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_pdp.resources import blueprint

    return [blueprint]


@hookimpl(trylast=True)
def didmos_directory_migrations():
    return [SchemaMigration(name=f"didmos_pdp.{path.stem}", ldif=path, order=20)
            for path in sorted(SCHEMA_DIR.glob("*.ldif"))]


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    base = settings.pdp.rbac_dn
    entries = [DirectoryEntry(dn=f"ou={ou},{base}", attributes={"objectClass": ["organizationalUnit"], "ou": [ou]})
               for ou in ("roles", "permissions", "constraints", "sessions")]
    for name, spec in DEFAULT_PERMISSIONS.items():
        attributes = {"objectClass": ["didmosPermission"], "cn": [name], "didmosOperation": spec["operations"],
                      "didmosResourceType": [spec["resource_type"]], "didmosObjectScope": [spec["scope"]],
                      "description": [spec["description"]]}
        if spec.get("attributes"):
            attributes["didmosAttributeName"] = spec["attributes"]
        entries.append(DirectoryEntry(dn=f"cn={name},ou=permissions,{base}", attributes=attributes))
    for name, spec in DEFAULT_ROLES.items():
        attributes = {"objectClass": ["didmosRole"], "cn": [name], "description": [spec["description"]],
                      "didmosPermissionRef": [f"cn={p},ou=permissions,{base}" for p in spec["permissions"]]}
        if spec["juniors"]:
            attributes["didmosRoleJunior"] = [f"cn={j},ou=roles,{base}" for j in spec["juniors"]]
        entries.append(DirectoryEntry(dn=f"cn={name},ou=roles,{base}", attributes=attributes))
    return entries


@hookimpl(wrapper=True, specname="didmos_directory_entries")
def give_the_superadmin_its_roles(settings):
    """Give the superadmin that didmos_ldap declares its roles, in the same add (never a later modify)."""
    results = yield
    uuid = settings.get("ldap.superadmin.uuid")
    roles = [f"cn={role},ou=roles,{settings.pdp.rbac_dn}" for role in settings.pdp.superadmin_roles]
    for entries in results:
        for entry in entries or ():
            if uuid and entry.dn.lower().startswith(f"didmosuuid={uuid},".lower()):
                entry.attributes["objectClass"] = [*entry.attributes["objectClass"], "didmosRoleHolder"]
                entry.attributes["didmosRoleAssignment"] = roles
    return results


@hookimpl(trylast=True)
def didmos_authorize(host, actor, action):
    """Allow what the actor's roles permit; otherwise abstain (and nobody allowing means deny)."""
    if actor is None:
        return None
    return True if host.service("pdp").decide(actor, action) else None
