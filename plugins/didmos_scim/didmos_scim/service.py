"""SCIM operations on the directory, shared by both mounts (``/scim/v2`` and ``/lui2_backend/v2``).

Every read is decided by the PDP: a resource the actor may not read is 403, a list contains only
readable entries (the PDP's read filter is part of the one LDAP search), and a resource shows only
the attributes the actor may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from didmos_host.errors import DidmosError, Forbidden, NotFound
from didmos_host.records import Action, Actor, ResourceType
from didmos_ldap.directory import VERSION_ATTRIBUTES, location
from didmos_ldap.filters import all_of, eq
from didmos_scim import filters as scim_filters
from didmos_scim.convert import to_scim
from didmos_scim.mapping import Mapping

#: Default order of a list: entryUUID has an ordering rule, so paging is stable without a sortBy.
DEFAULT_SORT = "entryUUID:uuidOrderingMatch"
ORDERING_RULES = {"string": "caseIgnoreOrderingMatch", "dateTime": "generalizedTimeOrderingMatch",
                  "integer": "integerOrderingMatch"}


class ScimError(DidmosError):
    """An error with a SCIM ``scimType`` (RFC 7644 3.12)."""

    def __init__(self, message: str, *, status: int, scim_type: str | None = None):
        super().__init__(message, status=status)
        self.scim_type = scim_type


@dataclass
class Page:
    resources: list[dict[str, Any]]
    total: int
    start_index: int


class ScimService:
    """SCIM reads (and, next, writes) of the registered resource types."""

    def __init__(self, host):
        self.host = host
        self._mappings: dict[str, Mapping] = {}

    @property
    def directory(self):
        return self.host.service("directory")

    @property
    def pdp(self):
        return self.host.service("pdp")

    def resource_type(self, name: str) -> ResourceType:
        try:
            return self.host.resource_types[name]
        except KeyError:
            raise NotFound(f"no resource type {name!r}") from None

    def mapping(self, resource_type: ResourceType) -> Mapping:
        mapping = self._mappings.get(resource_type.name)
        if mapping is None:
            mapping = self.host.hook.didmos_attribute_mapping(resource_type=resource_type)
            if mapping is None:
                raise DidmosError(f"no attribute mapping for resource type {resource_type.name!r}")
            self._mappings[resource_type.name] = mapping
        return mapping

    def _type_filter(self, resource_type: ResourceType):
        return all_of(*(eq("objectClass", oc) for oc in resource_type.object_classes))

    def _attributes(self, mapping: Mapping) -> list[str]:
        return ["didmosUUID", "objectClass", *mapping.ldap_attributes(), *VERSION_ATTRIBUTES]

    # -- reading -----------------------------------------------------------------------------------

    def get(self, type_name: str, resource_id: str, actor: Actor, *, base_url: str) -> tuple[dict, Any]:
        """One resource as ``actor`` may see it, and its entry. 404 when absent, 403 when not readable."""
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        entry = self.directory.get_by_uuid(resource_id, self.host.settings.ldap.base_dn, self._attributes(mapping))
        wanted = {oc.lower() for oc in resource_type.object_classes}
        if entry is None or not wanted <= {oc.lower() for oc in entry.values("objectClass")}:
            raise NotFound(f"no {type_name} with id {resource_id!r}")
        subject = self.pdp.subject(actor)
        decision = self.pdp.decide(actor, Action("read", type_name, entry.dn), subject)
        if not decision:
            raise Forbidden(f"not allowed to read {type_name} {resource_id}")
        resource = self._render([entry], resource_type, mapping, base_url)[0]
        return self._readable(resource, mapping, decision.attributes), entry

    def list(self, type_name: str, actor: Actor, *, base_url: str, filter_text: str | None = None,
             start_index: int = 1, count: int = 100, sort_by: str | None = None,
             sort_order: str = "ascending") -> Page:
        """A page of the resources ``actor`` may read that match ``filter_text``: one LDAP search.

        Paging and sorting are the server's (Server Side Sorting with Virtual List View), however large
        the directory.
        """
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        condition = self._type_filter(resource_type)
        if filter_text:
            condition = condition & scim_filters.to_ldap(filter_text, mapping, resolve_id=self._dn_of)
        subject = self.pdp.subject(actor)
        readable = self.pdp.read_filter(actor, type_name, subject)
        if readable is not None:
            condition = condition & readable
        sort = self._sort_key(mapping, sort_by, sort_order)
        start_index = max(start_index, 1)
        if count <= 0:
            # RFC 7644 3.4.2.4: count 0 asks only for the total; the window needs at least one entry
            _, total = self.directory.window(self.host.settings.ldap.base_dn, condition, [sort], offset=1, count=1,
                                             attrs=["1.1"])
            return Page([], total, start_index)
        entries, total = self.directory.window(self.host.settings.ldap.base_dn, condition, [sort],
                                               offset=start_index, count=count, attrs=self._attributes(mapping))
        resources = self._render(entries, resource_type, mapping, base_url)
        policy = self.pdp.policy()
        roles = policy.default_active_roles(subject.assigned)
        shown = []
        for entry, resource in zip(entries, resources):
            decision = policy.check_access(roles, "read", type_name, entry.dn, subject.context)
            shown.append(self._readable(resource, mapping, decision.attributes))
        return Page(shown, total, start_index)

    def _sort_key(self, mapping: Mapping, sort_by: str | None, sort_order: str) -> str:
        if not sort_by:
            key = DEFAULT_SORT
        else:
            try:
                leaf = mapping.resolve(sort_by).leaf
            except ValueError as exc:
                raise ScimError(f"sortBy: {exc}", status=400, scim_type="invalidValue") from None
            ldap_attr = leaf.ldap or (leaf.by_type[0][1] if leaf.by_type else None)
            if ldap_attr is None:
                raise ScimError(f"sortBy: {sort_by!r} cannot be sorted on", status=400, scim_type="invalidValue")
            rule = ORDERING_RULES.get(leaf.type, "caseIgnoreOrderingMatch")
            key = f"{ldap_attr}:{rule}"
        if sort_order.lower() not in ("ascending", "descending"):
            raise ScimError(f"sortOrder must be ascending or descending, got {sort_order!r}", status=400,
                            scim_type="invalidValue")
        return ("-" + key) if sort_order.lower() == "descending" else key

    def _dn_of(self, resource_id: str) -> str | None:
        entry = self.directory.get_by_uuid(resource_id, self.host.settings.ldap.base_dn, ["1.1"])
        return entry.dn if entry else None

    def _render(self, entries, resource_type: ResourceType, mapping: Mapping, base_url: str) -> list[dict]:
        """Resources for a page of entries; every referenced entry is looked up in one bundled read."""
        reference_attributes = [a.ldap for _, a in mapping.attributes() if a.type == "complex" and a.ldap]
        dns = {dn for entry in entries for attr in reference_attributes for dn in entry.values(attr)}
        references = {}
        if dns:
            found = self.directory.get_many(dns, ["didmosUUID", "displayName", "cn", "objectClass"])
            for key, ref in found.items():
                classes = {oc.lower() for oc in ref.values("objectClass")}
                ref_type = "Group" if "groupofnames" in classes else "User"
                if ref.first("didmosUUID"):
                    references[ref.dn.lower()] = (ref.first("didmosUUID"), ref.first("displayName") or ref.first("cn"),
                                                  ref_type)
                    references[key] = references[ref.dn.lower()]
        resources = []
        for entry in entries:
            resource = to_scim(entry, mapping, resource_type=resource_type.name, base_url=base_url,
                               references=references)
            resource["meta"]["location"] = f"{base_url}{resource_type.endpoint}/{resource['id']}"
            resource["location"] = location(entry.dn)
            resources.append(resource)
        return resources

    def _readable(self, resource: dict, mapping: Mapping, attributes: frozenset[str] | None) -> dict:
        """Drop the attributes whose LDAP attributes the actor may not read (``None``: all readable)."""
        if attributes is None:
            return resource
        allowed = {a.lower() for a in attributes}
        for schema in mapping.schemas:
            target = resource if schema is mapping.core else resource.get(schema.id, {})
            for attribute in schema.attributes:
                stored = attribute.ldap_attributes
                if stored and attribute.name in target and not any(a.lower() in allowed for a in stored):
                    del target[attribute.name]
        return resource
