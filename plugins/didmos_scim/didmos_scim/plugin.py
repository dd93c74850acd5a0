"""The didmos_scim plugin's hook implementations: resource types and mappings (the API follows)."""

from __future__ import annotations

from didmos_host import hookimpl
from didmos_host.records import ResourceType
from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, GROUP, LUI, ORGANIZATION, USER

#: The resource types of the seeds. ``base`` names the didmos_ldap setting of their default parent.
RESOURCE_TYPES = (
    ResourceType(name="User", endpoint="/Users", schema=USER, extensions=(ENTERPRISE, LUI),
                 object_classes=DEFAULT_MAPPINGS["User"].object_classes, base="ldap.people_dn",
                 description="User Account"),
    ResourceType(name="Group", endpoint="/Groups", schema=GROUP, extensions=(LUI,),
                 object_classes=DEFAULT_MAPPINGS["Group"].object_classes, base="ldap.groups_dn",
                 description="Group"),
    ResourceType(name="Organization", endpoint="/Organizations", schema=ORGANIZATION, extensions=(LUI,),
                 object_classes=DEFAULT_MAPPINGS["Organization"].object_classes, base="ldap.organizations_dn",
                 description="Organization"),
)


@hookimpl(trylast=True)
def didmos_resource_types():
    return list(RESOURCE_TYPES)


@hookimpl(trylast=True)
def didmos_attribute_mapping(resource_type):
    return DEFAULT_MAPPINGS.get(resource_type.name)
