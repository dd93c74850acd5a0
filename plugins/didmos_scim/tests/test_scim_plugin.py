"""The SCIM plugin's registrations: resource types and overridable mappings."""

from didmos_host import hookimpl
from didmos_host.host import Host
from didmos_scim.mapping import USER, Attribute


def test_resource_types_are_registered():
    host = Host.create()
    assert set(host.resource_types) >= {"User", "Group", "Organization"}
    assert host.resource_types["User"].endpoint == "/Users" and host.resource_types["User"].base == "ldap.people_dn"


def test_a_customer_plugin_can_wrap_the_user_mapping():
    class ShoeSizes:
        @hookimpl(wrapper=True)
        def didmos_attribute_mapping(self, resource_type):
            mapping = yield
            if resource_type.name == "User":
                mapping = mapping.with_attribute(USER, Attribute("shoeSize", "integer", "didmosShoeSize"))
            return mapping

    host = Host.create(extra_plugins=[ShoeSizes()])
    users = host.hook.didmos_attribute_mapping(resource_type=host.resource_types["User"])
    assert users.resolve("shoeSize").leaf.ldap == "didmosShoeSize"
    groups = host.hook.didmos_attribute_mapping(resource_type=host.resource_types["Group"])
    assert groups.core.attribute("shoeSize") is None
