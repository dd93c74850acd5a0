"""SCIM operations on the directory, shared by both mounts (``/scim/v2`` and ``/lui2_backend/v2``).

Every read is decided by the PDP: a resource the actor may not read is 403, a list contains only
readable entries (the PDP's read filter is part of the one LDAP search), and a resource shows only
the attributes the actor may read.
"""

from __future__ import annotations

import base64
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Mapping as MappingABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.dn

from didmos_host.errors import AlreadyExists, DidmosError, Forbidden, NotFound, PreconditionFailed, Unavailable
from didmos_host.records import Action, Actor, ResourceType
from didmos_ldap.directory import VERSION_ATTRIBUTES, location, normalize_dn
from didmos_ldap.filters import all_of, any_of, eq
from didmos_scim import filters as scim_filters
from didmos_scim.convert import InvalidValue, to_ldap, to_scim
from didmos_scim.mapping import Attribute, Mapping
from didmos_scim.patch import Changes, InvalidSyntax, operations_of

#: Object classes of entries a reference shows as ``"type": "Group"``.
GROUP_CLASSES = {"didmosgroup", "groupofnames", "groupofuniquenames"}
#: The SCIM operations of a PATCH as PDP operations on attributes (a replace by nothing removes).
PDP_OPERATIONS = {ldap.MOD_ADD: "modify-add", ldap.MOD_DELETE: "modify-del", ldap.MOD_REPLACE: "modify-replace"}
#: How often a generated userName is tried again when it is taken.
USER_NAME_ATTEMPTS = 10
#: How often an add whose userName another add took at the same moment is tried again.
UNIQUE_ATTEMPTS = 5
#: userNames per search of :meth:`ScimService.confirm_unique`.
UNIQUE_BATCH = 100

#: Default order of a list: entryUUID has an ordering rule, so paging is stable without a sortBy.
DEFAULT_SORT = "entryUUID:uuidOrderingMatch"
ORDERING_RULES = {"string": "caseIgnoreOrderingMatch", "dateTime": "generalizedTimeOrderingMatch",
                  "integer": "integerOrderingMatch"}


class ScimError(DidmosError):
    """An error with a SCIM ``scimType`` (RFC 7644 3.12)."""

    def __init__(self, message: str, *, status: int, scim_type: str | None = None):
        super().__init__(message, status=status)
        self.scim_type = scim_type


@dataclass(frozen=True)
class Created:
    """What :meth:`ScimService.add` created: the resource's id and DN, and for a type with a
    userName its LDAP attribute and value (what :meth:`ScimService.confirm_unique` checks)."""

    id: str
    dn: str
    unique_attr: str | None = None
    unique_value: str | None = None


@dataclass
class Page:
    resources: list[dict[str, Any]]
    total: int
    start_index: int
    entries: list[Any] = field(default_factory=list)
    #: With cursor paging (RFC 9865): the cursor of the next page, None on the last page.
    next_cursor: str | None = None


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

    @property
    def _veto_caller(self):
        """The ``didmos_authorize`` hook without the votes this service has already applied, or None
        when no other plugin votes: what customer plugins' votes say about a SCIM request.

        Left out: the PDP's vote (this service asks the PDP itself, for the attributes too) and
        didmos_auth's scope vote (enforced where every write passes, the LDAP pre-operation hook,
        with its RFC 6750 ``insufficient_scope`` answer)."""
        try:
            return self.__dict__["_vetoes"]
        except KeyError:
            pass
        pm = self.host.pm
        pdp_plugins = [impl.plugin for impl in pm.hook.didmos_authorize.get_hookimpls()
                       if impl.function.__module__.split(".")[0] in ("didmos_pdp", "didmos_auth")]
        others = [impl for impl in pm.hook.didmos_authorize.get_hookimpls() if impl.plugin not in pdp_plugins]
        caller = pm.subset_hook_caller("didmos_authorize", remove_plugins=pdp_plugins) if others else None
        self.__dict__["_vetoes"] = caller
        return caller

    def _vetoed(self, actor: Actor, action: Action) -> bool:
        """True when a plugin's ``didmos_authorize`` votes False: deny wins, as in ``Host.authorize``."""
        caller = self._veto_caller
        return caller is not None and any(vote is False for vote in caller(host=self.host, actor=actor, action=action))

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
        return ["didmosUUID", "objectClass", *mapping.ldap_attributes(), *VERSION_ATTRIBUTES, "didmosRoleAssignment"]

    # -- reading -----------------------------------------------------------------------------------

    def get(self, type_name: str, resource_id: str, actor: Actor, *, base_url: str,
            names: bool = True) -> tuple[dict, Any]:
        """One resource as ``actor`` may see it, and its entry. 404 when absent, 403 when not readable."""
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        entry = self.directory.get_by_uuid(resource_id, self.host.settings.ldap.base_dn, self._attributes(mapping))
        wanted = {oc.lower() for oc in resource_type.object_classes}
        if entry is None or not wanted <= {oc.lower() for oc in entry.values("objectClass")}:
            raise NotFound(f"no {type_name} with id {resource_id!r}")
        subject = self.pdp.subject(actor)
        decision = self.pdp.decide(actor, Action("read", type_name, entry.dn), subject)
        if not decision or self._vetoed(actor, Action("read", type_name, entry.dn)):
            raise Forbidden(f"not allowed to read {type_name} {resource_id}")
        resource = self._render([entry], resource_type, mapping, base_url, names)[0]
        return self._readable(resource, mapping, decision.attributes), entry

    def list(self, type_name: str, actor: Actor, *, base_url: str, filter_text: str | None = None,
             start_index: int = 1, count: int = 100, sort_by: str | None = None,
             sort_order: str = "ascending", with_entries: bool = False, cursor: str | None = None,
             names: bool = True) -> Page:
        """A page of the resources ``actor`` may read that match ``filter_text``: one LDAP search.

        Paging and sorting are the server's (Server Side Sorting with Virtual List View), however large
        the directory. ``cursor`` (RFC 9865; ``""`` for the first page) pages by id order instead of by
        index: the cursor names the last resource of the page before, so resources added or removed
        before it do not shift the next page.
        """
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        condition = self._type_filter(resource_type)
        subject = self.pdp.subject(actor)
        if filter_text:
            translated = scim_filters.to_ldap(filter_text, mapping, resolve_id=self._dn_of)
            self._check_filter_readable(translated, actor, type_name, subject)
            condition = condition & translated
        readable = self.pdp.read_filter(actor, type_name, subject)
        if readable is not None:
            condition = condition & readable
        if cursor is not None:
            return self._cursor_page(resource_type, mapping, condition, subject, cursor, count, base_url,
                                     sort_by, with_entries, names, actor=actor)
        sort = self._sort_key(mapping, sort_by, sort_order)
        start_index = max(start_index, 1)
        if count <= 0:
            # RFC 7644 3.4.2.4: count 0 asks only for the total; the window needs at least one entry
            _, total = self.directory.window(self.host.settings.ldap.base_dn, condition, [sort], offset=1, count=1,
                                             attrs=["1.1"])
            return Page([], total, start_index)
        entries, total = self.directory.window(self.host.settings.ldap.base_dn, condition, [sort],
                                               offset=start_index, count=count, attrs=self._attributes(mapping))
        shown = self._shown(entries, resource_type, mapping, subject, base_url, names, actor=actor)
        return Page(shown, total, start_index, entries if with_entries else [])

    def _shown(self, entries, resource_type: ResourceType, mapping: Mapping, subject, base_url: str,
               names: bool = True, *, actor: Actor | None = None) -> list[dict]:
        resources = self._render(entries, resource_type, mapping, base_url, names)
        policy = self.pdp.policy()
        roles = policy.default_active_roles(subject.assigned)
        vetoes = actor is not None and self._veto_caller is not None
        shown = []
        for entry, resource in zip(entries, resources):
            if vetoes and self._vetoed(actor, Action("read", resource_type.name, entry.dn)):
                continue  # a plugin's vote took it away (totalResults still counts it)
            decision = policy.check_access(roles, "read", resource_type.name, entry.dn, subject.context)
            shown.append(self._readable(resource, mapping, decision.attributes))
        return shown

    def _cursor_page(self, resource_type, mapping, condition, subject, cursor: str, count: int, base_url: str,
                     sort_by: str | None, with_entries: bool, names: bool = True, *,
                     actor: Actor | None = None) -> Page:
        if sort_by:
            raise ScimError("cursor pages are in id order; leave out sortBy, or page with startIndex",
                            status=400, scim_type="invalidValue")
        after = decode_cursor(cursor)
        base = self.host.settings.ldap.base_dn
        count = max(count, 0)
        if after is None:
            entries, total = self.directory.window(base, condition, [DEFAULT_SORT], offset=1, count=count + 1,
                                                   attrs=self._attributes(mapping)) if count else \
                ([], self.directory.window(base, condition, [DEFAULT_SORT], offset=1, count=1, attrs=["1.1"])[1])
            position = 1
        else:
            # from the cursor's resource on (it comes first when it still exists; then it is skipped)
            entries, total, position = self.directory.window_from(base, condition, DEFAULT_SORT, at=after,
                                                                  count=count + 2, attrs=self._attributes(mapping))
            if entries and entries[0].first("entryUUID") == after:
                entries, position = entries[1:], position + 1
        more = len(entries) > count
        entries = entries[:count]
        next_cursor = encode_cursor(entries[-1].first("entryUUID")) if more and entries else None
        shown = self._shown(entries, resource_type, mapping, subject, base_url, names, actor=actor)
        return Page(shown, total, position, entries if with_entries else [], next_cursor)

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

    def _render(self, entries, resource_type: ResourceType, mapping: Mapping, base_url: str,
                names: bool = True) -> list[dict]:
        """Resources for a page of entries; referenced entries are looked up in one bundled read.

        Without ``names`` (nobody asked for ``display``), a reference whose DN is
        ``didmosUUID=<id>`` below the people or groups container needs no lookup at all: its id and
        type are in the DN. Adding one member to a big group then answers without reading them all.
        """
        reference_attributes = [a.ldap for _, a in mapping.attributes() if a.type == "complex" and a.ldap]
        dns = {dn for entry in entries for attr in reference_attributes for dn in entry.values(attr)}
        references = {}
        if dns and not names:
            containers = self._containers()
            unresolved = set()
            for dn in dns:
                known = _reference_in_dn(dn, containers)
                if known is None:
                    unresolved.add(dn)
                else:
                    references[dn.lower()] = known
            dns = unresolved
        if dns:
            found = self.directory.get_many(dns, ["didmosUUID", "displayName", "cn", "objectClass"])
            for key, ref in found.items():
                classes = {oc.lower() for oc in ref.values("objectClass")}
                ref_type = "Group" if classes & GROUP_CLASSES else "User"
                if ref.first("didmosUUID"):
                    references[ref.dn.lower()] = (ref.first("didmosUUID"), ref.first("displayName") or ref.first("cn"),
                                                  ref_type)
                    references[key] = references[ref.dn.lower()]
                    for dn in dns:
                        if normalize_dn(dn) == key:
                            references[dn.lower()] = references[key]
        resources = []
        for entry in entries:
            resource = to_scim(entry, mapping, resource_type=resource_type.name, base_url=base_url,
                               references=references)
            resource["meta"]["location"] = f"{base_url}{resource_type.endpoint}/{resource['id']}"
            resource["location"] = location(entry.dn)
            resources.append(resource)
        return resources

    def _containers(self) -> dict[str, str]:
        """Normalized DN of the people and groups containers -> the type of what they hold."""
        found = {}
        for key, type_name in (("ldap.people_dn", "User"), ("ldap.groups_dn", "Group")):
            dn = self.host.settings.get(key)
            if dn:
                found[normalize_dn(dn)] = type_name
        return found

    def _readable(self, resource: dict, mapping: Mapping, attributes: frozenset[str] | None) -> dict:
        """Drop what the actor may not read (``attributes`` are the readable LDAP attributes; ``None``:
        all): whole attributes, the sub-attributes of a complex one, and the values of a typed one
        stored in an unreadable LDAP attribute (read access to ``mobile`` shows mobile numbers only)."""
        if attributes is None:
            return resource
        allowed = {a.lower() for a in attributes}
        for schema, attribute in mapping.attributes():
            target = resource if schema is mapping.core else resource.get(schema.id)
            if not isinstance(target, dict) or attribute.name not in target:
                continue
            stored = attribute.ldap_attributes
            if not stored:
                continue
            if not any(a.lower() in allowed for a in stored):
                del target[attribute.name]
            elif attribute.by_type:
                kept = [item for item in target[attribute.name]
                        if (attribute.ldap_for_type(item.get("type")) or "").lower() in allowed]
                if kept:
                    target[attribute.name] = kept
                else:
                    del target[attribute.name]
            elif attribute.type == "complex" and not attribute.ldap:
                hidden = {sub.name for sub in attribute.sub_attributes if sub.ldap and sub.ldap.lower() not in allowed}
                items = target[attribute.name] if isinstance(target[attribute.name], list) else [target[attribute.name]]
                for item in items:
                    for name in hidden:
                        item.pop(name, None)
        return resource

    def _check_filter_readable(self, condition, actor: Actor, type_name: str, subject) -> None:
        """A list filter may name only attributes the actor may read in every entry it may list:
        otherwise which entries match would tell values it cannot see. So the attribute must be in the
        attribute set of every read grant (a grant without a set allows all)."""
        policy = self.pdp.policy()
        grants = policy.grants(policy.default_active_roles(subject.assigned), "read", type_name)
        if not grants:
            return  # nothing of this type is readable: the list is empty whatever the filter says
        limited = [frozenset(a.lower() for a in g.permission.attributes) for g in grants if g.permission.attributes]
        if not limited:
            return
        readable = frozenset.intersection(*limited)
        free = {"objectclass", "didmosuuid", "entrydn", "entryuuid", "createtimestamp", "modifytimestamp"}
        named = {a.lower() for a in _filter_attributes(condition)} - free
        hidden = sorted(named - readable)
        if hidden:
            raise Forbidden(f"the filter names attributes the caller may not read: "
                            f"{', '.join(self._scim_names(self._mapping_of(type_name), hidden))}")

    # -- writing -----------------------------------------------------------------------------------

    def _entry(self, type_name: str, resource_id: str, attrs) -> tuple[ResourceType, Mapping, Any]:
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        entry = self.directory.get_by_uuid(resource_id, self.host.settings.ldap.base_dn,
                                           [*attrs(mapping), "objectClass", "didmosUUID", *VERSION_ATTRIBUTES])
        wanted = {oc.lower() for oc in resource_type.object_classes}
        if entry is None or not wanted <= {oc.lower() for oc in entry.values("objectClass")}:
            raise NotFound(f"no {type_name} with id {resource_id!r}")
        return resource_type, mapping, entry

    def resolver(self):
        """``resolve(id, where)`` -> DN of the resource with that id; ``invalidValue`` when there is none."""
        base = self.host.settings.ldap.base_dn

        def resolve(ref_id: str, where: str) -> str:
            entry = self.directory.get_by_uuid(ref_id, base, ["1.1"])
            if entry is None:
                raise InvalidValue(f"{where}: no resource with id {ref_id!r}")
            return entry.dn

        return resolve

    def _read_back(self, mapping: Mapping) -> list[str]:
        return self._attributes(mapping)

    def create(self, type_name: str, body: Any, actor: Actor, *, base_url: str, strict: bool = True,
               parent: str | None = None, names: bool = True, subject=None) -> tuple[dict, Any]:
        """Create a resource (RFC 7644 3.3) under ``parent`` (default: the type's configured base).

        A User without ``userName`` gets one from the ``didmos_user_name`` hook; ``displayName`` and
        ``name.formatted`` are derived from the name when absent. One LDAP add, which returns the entry
        as stored (Post-Read control). ``subject``: the actor's PDP subject when the caller holds it
        (otherwise the actor's roles are read now).
        """
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        _, entry, subject = self._create(resource_type, mapping, body, actor, subject, strict=strict,
                                         parent=parent, read_back=True, verify_unique=True)
        resource = self._render([entry], resource_type, mapping, base_url, names)[0]
        decision = self.pdp.decide(actor, Action("read", type_name, entry.dn), subject)
        return self._readable(resource, mapping, decision.attributes if decision else frozenset()), entry

    def add(self, type_name: str, body: Any, actor: Actor, *, subject=None, strict: bool = True,
            parent: str | None = None, verify_unique: bool = True) -> Created:
        """Create a resource as :meth:`create` does (the same conversion, defaults, PDP decision,
        interceptors and one LDAP add) for a caller that does not answer with it (``didmos import``):
        no Post-Read control, nothing rendered, no read decision.

        ``verify_unique=False`` leaves the uniqueness check after the add (:meth:`_add_unique`) to the
        caller, which must pass the result to :meth:`confirm_unique` (many at once: one search) before
        it counts the resource as created: until then another entry may hold the same userName.
        """
        resource_type = self.resource_type(type_name)
        mapping = self.mapping(resource_type)
        created, _, _ = self._create(resource_type, mapping, body, actor, subject, strict=strict, parent=parent,
                                     read_back=False, verify_unique=verify_unique)
        return created

    def _create(self, resource_type: ResourceType, mapping: Mapping, body: Any, actor: Actor, subject, *,
                strict: bool, parent: str | None, read_back: bool, verify_unique: bool):
        """The add of :meth:`create` and :meth:`add`: (what was created, the entry read back or None,
        the subject the PDP decided with)."""
        type_name = resource_type.name
        if not isinstance(body, MappingABC):
            raise InvalidSyntax("the request body must be a JSON object (the resource)")
        if not strict:
            body = tolerate(mapping, body)
        attrs = to_ldap(body, mapping, strict=strict, resolve_reference=self.resolver())
        for ldap_attr, value in mapping.defaults:
            if not any(k.lower() == ldap_attr.lower() for k in attrs):
                attrs[ldap_attr] = [value]
        self._derive(mapping, attrs)
        self._require(mapping, attrs)
        parent = self._parent(resource_type, parent)
        resource_id = str(uuid.uuid4())
        dn = f"didmosUUID={resource_id},{parent}"
        if subject is None:
            subject = self.pdp.subject(actor)
        self._authorize(actor, subject, "create", resource_type, dn, resource_id, attrs)
        for attr, values in self.pdp.new_entry_attributes(type_name).items():
            attrs[attr] = list(dict.fromkeys([*attrs.get(attr, []), *values]))
        attrs["objectClass"] = list(dict.fromkeys([*mapping.object_classes, *mapping.auxiliary_classes,
                                                   *attrs.get("objectClass", [])]))
        attrs["didmosUUID"] = [resource_id]
        user_name = mapping.core.attribute("userName")
        generate = user_name is not None and user_name.ldap and user_name.ldap not in attrs
        for attempt in range(USER_NAME_ATTEMPTS if generate else 1):
            if generate:
                attrs[user_name.ldap] = [self._user_name(resource_type, attrs, attempt)]
                self._derive(mapping, attrs)
            try:
                entry = self._add_unique(dn, attrs, actor, mapping, user_name, read_back=read_back,
                                         verify=verify_unique)
                break
            except AlreadyExists as exc:
                if not generate or "unique" not in exc.message:
                    raise self._taken(exc, mapping, attrs) from None
        else:
            raise AlreadyExists(f"no free userName after {USER_NAME_ATTEMPTS} generated names")
        unique_attr = user_name.ldap if user_name is not None and user_name.ldap in attrs else None
        created = Created(resource_id, dn, unique_attr, str(attrs[unique_attr][0]) if unique_attr else None)
        return created, entry, subject

    def _add_unique(self, dn: str, attrs: dict, actor: Actor, mapping: Mapping, user_name: Attribute | None, *,
                    read_back: bool = True, verify: bool = True):
        """One LDAP add; for an entry with a userName, also make sure no other entry got it meanwhile.

        slapo-unique looks for the uid with a search before the add, outside the add's transaction, so
        two adds of one uid at the same moment can both pass it (tests/test_concurrency.py saw two
        users of one userName). So the new entry looks for others with its uid after the add: when there
        are some, it deletes itself and the add counts as refused; of two such entries each sees the
        other, so at most one stays. When the others are gone as well (they did the same at the same
        moment), it tries again after a random pause, where slapo-unique sees whoever came first.

        Without ``verify`` the look after the add is the caller's (:meth:`confirm_unique`); without
        ``read_back`` the add sends no Post-Read control and None is returned.
        """
        read_back = self._read_back(mapping) if read_back else None
        uid = user_name.ldap if user_name is not None and user_name.ldap and user_name.ldap in attrs else None
        for _ in range(UNIQUE_ATTEMPTS):
            entry = self.directory.add(dn, attrs, actor=actor, read_back=read_back)
            if uid is None or not verify or not self._others_with(uid, attrs[uid][0], dn):
                return entry
            self.directory.delete(dn, actor=actor)
            time.sleep(random.uniform(0.005, 0.05))
            if self._others_with(uid, attrs[uid][0], dn):
                break
        raise AlreadyExists(f"{uid} {attrs[uid][0]!r} is not unique: another entry was added with it at the "
                            "same time")

    def _modify_unique(self, entry, modlist, actor: Actor, mapping: Mapping, if_match: str | None):
        """One LDAP modify; when it gives the entry a new userName, also make sure no other entry got the
        same one meanwhile (slapo-unique's race, as in :meth:`_add_unique`): when one did, the userName is
        set back and the change is refused with 409, or, without If-Match, tried again after a random
        pause once the others have gone."""
        user_name = mapping.core.attribute("userName")
        uid = user_name.ldap if user_name is not None and user_name.ldap else None
        new = next((values[0] for op, attr, values in reversed(modlist)
                    if uid and attr.lower() == uid.lower() and op in (ldap.MOD_ADD, ldap.MOD_REPLACE) and values),
                   None)
        new = new.decode() if isinstance(new, bytes) else new
        old = entry.values(uid) if uid else []
        for _ in range(UNIQUE_ATTEMPTS):
            changed = self.directory.modify(entry.dn, modlist, actor=actor, if_match=self.assertion(if_match),
                                            permissive=True, read_back=self._read_back(mapping))
            if new is None or not self._others_with(uid, new, entry.dn):
                return changed
            self.directory.modify(entry.dn, [(ldap.MOD_REPLACE, uid, old or None)], actor=actor)
            time.sleep(random.uniform(0.005, 0.05))
            if if_match is not None or self._others_with(uid, new, entry.dn):
                break  # (after setting it back, an If-Match names a version that is gone)
        raise AlreadyExists(f"userName {new!r} is taken", detail={"attribute": "userName"})

    def _others_with(self, attr: str, value: Any, dn: str) -> bool:
        """Whether an entry other than ``dn`` has ``attr`` ``value`` anywhere in the directory."""
        found = self.directory.search(self.host.settings.directory.suffix, eq(attr, value), attrs=["1.1"])
        return any(normalize_dn(entry.dn) != normalize_dn(dn) for entry in found)

    def confirm_unique(self, created: Sequence[Created], actor: Actor) -> dict[str, Any]:
        """The look after the add of :meth:`_add_unique` for many adds made with ``verify_unique=False``,
        in one search per :data:`UNIQUE_BATCH` userNames, with the same rule: an entry that sees another
        entry with its userName deletes itself, and after a random pause looks again.

        Every search runs after every add it checks, so of two adds of one userName at least one sees the
        other, whether it was checked alone or in a batch: at most one stays. Returns, per DN: ``"kept"``;
        ``"retry"`` (deleted, and the others deleted themselves too: add it again); or the error that
        refuses the add (deleted, another entry holds the userName: :class:`AlreadyExists`).
        """
        checked = [c for c in created if c.unique_attr and c.unique_value]
        verdicts: dict[str, Any] = {c.dn: "kept" for c in created}
        crowded = self._crowded(checked)
        losers = []
        for loser in (c for c in checked if c.dn in crowded):
            try:
                self.directory.delete(loser.dn, actor=actor)
                losers.append(loser)
            except Unavailable:
                raise
            except DidmosError as exc:  # refused (an interceptor): the add fails with that, as in _add_unique
                verdicts[loser.dn] = exc
        if losers:
            time.sleep(random.uniform(0.005, 0.05))
            still = self._crowded(losers)
            for loser in losers:
                verdicts[loser.dn] = AlreadyExists(
                    f"userName {loser.unique_value!r} is taken: another entry was added with it at the same time",
                    detail={"attribute": "userName"}) if loser.dn in still else "retry"
        return verdicts

    def _crowded(self, items: Sequence[Created]) -> set[str]:
        """The DNs of ``items`` whose unique value an entry other than their own also holds."""
        crowded: set[str] = set()
        suffix = self.host.settings.directory.suffix
        for start in range(0, len(items), UNIQUE_BATCH):
            part = items[start:start + UNIQUE_BATCH]
            attrs = sorted({c.unique_attr for c in part})
            keys = {(c.unique_attr.lower(), _folded(c.unique_value)) for c in part}
            holders: dict[tuple[str, str], set[str]] = {}
            unexplained = False
            for entry in self.directory.search(suffix, any_of(*(eq(c.unique_attr, c.unique_value) for c in part)),
                                               attrs=attrs):
                matched = False
                for attr in attrs:
                    for value in entry.values(attr):
                        key = (attr.lower(), _folded(value))
                        if key in keys:
                            holders.setdefault(key, set()).add(normalize_dn(entry.dn))
                            matched = True
                unexplained = unexplained or not matched
            for c in part:
                if unexplained:  # slapd matched a value by a rule _folded does not know: ask for each alone
                    others = self._others_with(c.unique_attr, c.unique_value, c.dn)
                else:
                    others = bool(holders.get((c.unique_attr.lower(), _folded(c.unique_value)), set())
                                  - {normalize_dn(c.dn)})
                if others:
                    crowded.add(c.dn)
        return crowded

    def _taken(self, exc: AlreadyExists, mapping: Mapping, attrs: dict) -> AlreadyExists:
        user_name = mapping.core.attribute("userName")
        if user_name is not None and user_name.ldap in attrs and "unique" in exc.message:
            return AlreadyExists(f"userName {attrs[user_name.ldap][0]!r} is taken", detail={"attribute": "userName"})
        return exc

    def _user_name(self, resource_type: ResourceType, attrs: dict, attempt: int) -> str:
        name = self.host.hook.didmos_user_name(resource_type=resource_type, attributes=attrs, attempt=attempt)
        if not isinstance(name, str) or not name:
            raise DidmosError(f"the didmos_user_name hook returned {name!r}, not a user name")
        return name

    def _parent(self, resource_type: ResourceType, parent: str | None) -> str:
        base = self.host.settings.ldap.base_dn
        if parent is None:
            parent = self.host.settings.get(resource_type.base) if resource_type.base else None
            if not parent:
                raise DidmosError(f"resource type {resource_type.name} has no default parent (setting "
                                  f"{resource_type.base!r})")
            return parent
        try:
            normalized = normalize_dn(parent)
        except ldap.DECODING_ERROR:
            raise InvalidValue(f"{parent!r} is not a DN") from None
        if not (normalized == normalize_dn(base) or normalized.endswith("," + normalize_dn(base))):
            raise InvalidValue(f"{parent!r} is not inside the directory's base {base}")
        if self.directory.get(parent, ["1.1"]) is None:
            raise NotFound(f"no entry {parent} to create the {resource_type.name} under")
        return parent

    @staticmethod
    def _derive(mapping: Mapping, attrs: dict[str, list[str]]) -> None:
        """Fill what the seeds derive: displayName and name.formatted (cn) from the name parts, and
        the surname a person entry must have."""
        classes = {oc.lower() for oc in mapping.object_classes}
        if not classes & {"inetorgperson", "person", "organizationalperson"}:
            if "didmosgroup" in classes or "groupofnames" in classes:
                attrs.setdefault("cn", attrs.get("displayName", []))
            return
        given, family = (attrs.get("givenName") or [""])[0], (attrs.get("sn") or [""])[0]
        full = " ".join(part for part in (given, family) if part)
        full = full or (attrs.get("displayName") or attrs.get("cn") or attrs.get("uid") or [""])[0]
        if not full:
            return
        attrs.setdefault("displayName", [full])
        attrs.setdefault("cn", [full])
        attrs.setdefault("sn", [full])

    @staticmethod
    def _require(mapping: Mapping, attrs: dict[str, list[str]]) -> None:
        for attribute in mapping.core.attributes:
            if attribute.required and attribute.name != "userName" and attribute.ldap and not attrs.get(attribute.ldap):
                raise InvalidValue(f"{attribute.name} is required")

    def _authorize(self, actor: Actor, subject, operation: str, resource_type: ResourceType, dn: str,
                   resource_id: str, attrs) -> None:
        """The PDP's decision on ``operation`` over the LDAP attributes ``attrs``: 403 naming what is denied.
        A plugin's ``didmos_authorize`` vote of False denies it whatever the PDP says."""
        if self._vetoed(actor, Action(operation, resource_type.name, dn)):
            raise Forbidden(f"not allowed to {operation} {resource_type.name} {resource_id}")
        decision = self.pdp.decide(actor, Action(operation, resource_type.name, dn), subject)
        granted, allowed = bool(decision), (decision.attributes if decision else frozenset())
        if operation.startswith("modify-"):
            broad = self.pdp.decide(actor, Action("write", resource_type.name, dn), subject)  # any change
            if broad:
                allowed = None if (granted and allowed is None) or broad.attributes is None \
                    else (allowed if granted else frozenset()) | broad.attributes
                granted = True
        if not granted:
            raise Forbidden(f"not allowed to {operation} {resource_type.name} {resource_id}")
        if allowed is None:
            return
        permitted = {a.lower() for a in allowed}
        denied = sorted({a for a in attrs if a.lower() not in permitted and a.lower() not in ("objectclass",)})
        if denied:
            names = self._scim_names(self.mapping(resource_type), denied)
            raise Forbidden(f"not allowed to {operation} {', '.join(names)} of {resource_type.name} {resource_id}",
                            detail={"attributes": names})

    @staticmethod
    def _scim_names(mapping: Mapping, ldap_attrs) -> list[str]:
        """``["sn", "title"]`` -> ``["name.familyName", "title"]``, for messages."""
        found = []
        for ldap_attr in ldap_attrs:
            name = ldap_attr
            for _, attribute in mapping.attributes():
                if ldap_attr.lower() not in {a.lower() for a in attribute.ldap_attributes}:
                    continue
                sub = next((s for s in attribute.sub_attributes if s.ldap and s.ldap.lower() == ldap_attr.lower()),
                           None)
                name = f"{attribute.name}.{sub.name}" if sub and not attribute.by_type else attribute.name
                break
            found.append(name)
        return found

    def _authorize_changes(self, actor: Actor, subject, resource_type: ResourceType, entry, modlist) -> None:
        by_operation: dict[str, list[str]] = {}
        for op, attr, values in modlist:
            operation = "modify-del" if op == ldap.MOD_REPLACE and not values else PDP_OPERATIONS[op]
            by_operation.setdefault(operation, []).append(attr)
        for operation, attrs in by_operation.items():
            self._authorize(actor, subject, operation, resource_type, entry.dn, entry.first("didmosUUID"), attrs)

    @staticmethod
    def assertion(if_match: str | None):
        """An LDAP filter for ``If-Match`` (``W/"<entryCSN>"``, several, or ``*``); None when absent."""
        if if_match is None or if_match.strip() == "*":
            return None
        versions = []
        for tag in if_match.split(","):
            tag = tag.strip()
            if tag.startswith("W/"):
                tag = tag[2:]
            tag = tag.strip('"')
            if tag:
                versions.append(eq("entryCSN", tag))
        if not versions:
            raise PreconditionFailed(f"If-Match {if_match!r} names no version")
        return str(any_of(*versions)) if len(versions) > 1 else str(versions[0])

    def _modify(self, actor, subject, resource_type, mapping, entry, changes: Changes, if_match, base_url,
                names: bool = True):
        self._complete(mapping, changes)
        modlist = changes.modlist()
        if modlist:
            self._authorize_changes(actor, subject, resource_type, entry, modlist)
            have = {oc.lower() for oc in entry.values("objectClass")}
            missing = [oc for oc in mapping.auxiliary_classes if oc.lower() not in have]
            if missing:  # an entry made outside didmos: its SCIM attributes need the class
                modlist = [(ldap.MOD_ADD, "objectClass", missing), *modlist]
            entry = self._modify_unique(entry, modlist, actor, mapping, if_match)
        else:
            # nothing to change, but the caller must still be one who may change this entry
            allowed = self.pdp.operations(actor, resource_type.name, entry.dn, subject)
            if not {"write", "modify-add", "modify-del", "modify-replace"} & set(allowed):
                raise Forbidden(f"not allowed to modify {resource_type.name} {entry.first('didmosUUID')}")
            if if_match is not None and self.assertion(if_match) is not None:
                current = f'W/"{entry.first("entryCSN")}"'
                tags = {t.strip() for t in if_match.split(",")}
                if current not in tags and current[2:] not in tags:
                    raise PreconditionFailed(f"{entry.dn} was changed since it was read")
            entry = self.directory.get(entry.dn, self._read_back(mapping), actor=actor)  # all of it, to answer
        resource = self._render([entry], resource_type, mapping, base_url, names)[0]
        decision = self.pdp.decide(actor, Action("read", resource_type.name, entry.dn), subject)
        return self._readable(resource, mapping, decision.attributes if decision else frozenset()), entry

    def _complete(self, mapping: Mapping, changes: Changes) -> None:
        """After a PUT or PATCH: what must not be empty (a person's cn and sn) is derived again."""
        touched = {k for k, v in changes.values.items() if not v}
        if not touched & {"cn", "sn"}:
            return
        state = {attr: changes.current(attr) for attr in ("givenName", "sn", "displayName", "cn", "uid")}
        state = {k: v for k, v in state.items() if v}
        self._derive(mapping, state)
        for attr in ("cn", "sn"):
            if attr.lower() in touched and attr in state and mapping_has(mapping, attr):
                changes.set(attr, state[attr], multi=False)

    def replace(self, type_name: str, resource_id: str, body: Any, actor: Actor, *, base_url: str,
                strict: bool = True, if_match: str | None = None, names: bool = True) -> tuple[dict, Any]:
        """PUT (RFC 7644 3.5.1): the mapped, writable attributes become the body's; nothing else changes."""
        if not isinstance(body, MappingABC):
            raise InvalidSyntax("the request body must be a JSON object (the resource)")
        resource_type, mapping, entry = self._entry(type_name, resource_id, lambda m: m.ldap_attributes())
        subject = self.pdp.subject(actor)
        if not strict:
            body = tolerate(mapping, body)
        desired = to_ldap(body, mapping, strict=strict, resolve_reference=self.resolver())
        changes = Changes(entry, mapping, loaded=set(mapping.ldap_attributes()), strict=strict,
                          resolve_reference=self.resolver())
        self._require(mapping, desired)
        changes.replace_all(desired, body)
        user_name = mapping.core.attribute("userName")
        if user_name is not None and user_name.ldap and not changes.values.get(user_name.ldap.lower()):
            changes.values.pop(user_name.ldap.lower(), None)  # a PUT without userName keeps it
        return self._modify(actor, subject, resource_type, mapping, entry, changes, if_match, base_url, names)

    def patch(self, type_name: str, resource_id: str, body: Any, actor: Actor, *, base_url: str,
              strict: bool = True, if_match: str | None = None, names: bool = True) -> tuple[dict, Any]:
        """PATCH (RFC 7644 3.5.2): all operations as one LDAP modify; large member lists are not read."""
        if not strict:
            body = tolerate_patch(self._mapping_of(type_name), body)
        operations = operations_of(body)
        big = {a.ldap.lower() for _, a in self._mapping_of(type_name).attributes()
               if a.type == "complex" and a.ldap and a.multi_valued}
        resource_type, mapping, entry = self._entry(
            type_name, resource_id, lambda m: [a for a in m.ldap_attributes() if a.lower() not in big])
        subject = self.pdp.subject(actor)
        changes = Changes(entry, mapping, loaded={a for a in mapping.ldap_attributes() if a.lower() not in big},
                          strict=strict, resolve_reference=self.resolver(),
                          reference_items=lambda attribute: self._reference_items(entry.dn, attribute, base_url))
        changes.patch(operations)
        return self._modify(actor, subject, resource_type, mapping, entry, changes, if_match, base_url, names)

    def project(self, resource: dict, type_name: str, attributes, excluded) -> dict:
        return project(resource, self._mapping_of(type_name), attributes, excluded)

    def strip_request_only(self, resource: dict, type_name: str, requested) -> dict:
        return strip_request_only(resource, self._mapping_of(type_name), requested)

    def _mapping_of(self, type_name: str) -> Mapping:
        return self.mapping(self.resource_type(type_name))

    def _reference_items(self, dn: str, attribute: Attribute, base_url: str) -> list[tuple[str, dict]]:
        """The current values of a reference attribute as (DN, SCIM value), for a value filter on them."""
        entry = self.directory.get(dn, [attribute.ldap])
        dns = entry.values(attribute.ldap) if entry else []
        found = self.directory.get_many(dns, ["didmosUUID", "displayName", "cn", "objectClass"]) if dns else {}
        items = []
        for member in dns:
            ref = found.get(normalize_dn(member))
            if ref is None:
                continue
            classes = {oc.lower() for oc in ref.values("objectClass")}
            ref_type = "Group" if classes & GROUP_CLASSES else "User"
            ref_id = ref.first("didmosUUID")
            items.append((member, {"value": ref_id, "display": ref.first("displayName") or ref.first("cn"),
                                   "type": ref_type, "$ref": f"{base_url}/{ref_type}s/{ref_id}"}))
        return items

    def delete(self, type_name: str, resource_id: str, actor: Actor, *, if_match: str | None = None) -> None:
        """DELETE (RFC 7644 3.6): one LDAP delete, with the If-Match version asserted."""
        resource_type, _, entry = self._entry(type_name, resource_id, lambda m: [])
        subject = self.pdp.subject(actor)
        self._authorize(actor, subject, "delete", resource_type, entry.dn, resource_id, ())
        self.directory.delete(entry.dn, actor=actor, if_match=self.assertion(if_match))


def _folded(value: str) -> str:
    """A value as caseIgnoreMatch compares it, near enough (its insignificant spaces, case and
    compatibility forms); :meth:`ScimService._crowded` asks slapd itself when it is not."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def mapping_has(mapping: Mapping, ldap_attr: str) -> bool:
    return any(a.lower() == ldap_attr.lower() for a in mapping.ldap_attributes())


# -- attributes and excludedAttributes (RFC 7644 3.4.2.5) ---------------------------------------------

#: Returned whatever ``attributes`` says (RFC 7643 returned "always").
ALWAYS = ("id", "schemas")


def _split(mapping: Mapping, name: str) -> tuple[str | None, str, str | None]:
    """``urn:...:User:name.givenName`` -> (extension URN or None for core, "name", "givenName")."""
    path = mapping.resolve(name)
    urn = None if path.schema is mapping.core else path.schema.id
    return urn, path.attribute.name, path.sub.name if path.sub else None


def project(resource: dict, mapping: Mapping, attributes: list[str] | None, excluded: list[str] | None) -> dict:
    """The resource with only ``attributes`` (plus id and schemas), or without ``excluded``.

    Names are SCIM paths, case-insensitive, ``meta`` and its sub-attributes included; a name the type
    does not have selects nothing (RFC 7644 3.4.2.5 does not make it an error, and a root ``.search``
    names attributes of several types).
    """
    def parse(names: list[str]) -> list[tuple[str | None, str, str | None]]:
        parsed = []
        for name in names:
            head = name.split(".", 1)
            if head[0].lower() in ("meta", "id", "externalid", "schemas"):
                key = {"meta": "meta", "id": "id", "externalid": "externalId", "schemas": "schemas"}[head[0].lower()]
                parsed.append((None, key, head[1] if len(head) > 1 else None))
                continue
            try:
                parsed.append(_split(mapping, name))
            except ValueError:
                continue  # a name this type does not have (a root .search spans types) selects nothing
        return parsed

    def find(container: dict, name: str) -> str | None:
        return next((k for k in container if k.lower() == name.lower()), None)

    if attributes:
        kept: dict[str, Any] = {key: resource[key] for key in ALWAYS if key in resource}
        if "location" in resource:
            kept["location"] = resource["location"]
        for urn, name, sub in parse(attributes):
            source = resource if urn is None else resource.get(urn, {})
            key = find(source, name)
            if key is None:
                continue
            target = kept if urn is None else kept.setdefault(urn, {})
            value = source[key]
            if sub is None:
                target[key] = value
            elif isinstance(value, dict):
                sub_key = find(value, sub)
                if sub_key is not None:
                    target.setdefault(key, {})[sub_key] = value[sub_key]
            elif isinstance(value, list):
                picked = [{k: v for k, v in item.items() if k.lower() == sub.lower()} for item in value
                          if isinstance(item, dict)]
                existing = target.get(key)
                if isinstance(existing, list) and len(existing) == len(picked):
                    target[key] = [{**a, **b} for a, b in zip(existing, picked)]
                else:
                    target[key] = picked
        return kept
    result = dict(resource)
    for urn, name, sub in parse(excluded or []):
        if urn is None and name in ALWAYS:
            continue
        container = result if urn is None else result.get(urn)
        if not isinstance(container, dict):
            continue
        if urn is not None:
            container = result[urn] = dict(container)
        key = find(container, name)
        if key is None:
            continue
        if sub is None:
            del container[key]
        elif isinstance(container[key], dict):
            container[key] = {k: v for k, v in container[key].items() if k.lower() != sub.lower()}
        elif isinstance(container[key], list):
            container[key] = [{k: v for k, v in item.items() if k.lower() != sub.lower()}
                              for item in container[key] if isinstance(item, dict)]
    return result


def strip_request_only(resource: dict, mapping: Mapping, requested: list[str] | None) -> dict:
    """Drop sub-attributes returned only on request (``primary``, ``display``) unless ``requested``
    names them (RFC 7643 2.4, ``returned: request``)."""
    wanted = {name.lower() for name in requested or ()}
    for schema in mapping.schemas:
        target = resource if schema is mapping.core else resource.get(schema.id)
        if not isinstance(target, dict):
            continue
        for attribute in schema.attributes:
            hidden = [sub.name for sub in attribute.sub_attributes if sub.returned in ("request", "never")
                      and f"{attribute.name}.{sub.name}".lower() not in wanted]
            key = next((k for k in target if k.lower() == attribute.name.lower()), None)
            if not hidden or key is None:
                continue
            items = target[key] if isinstance(target[key], list) else [target[key]]
            for item in items:
                if isinstance(item, dict):
                    for name in hidden:
                        item.pop(name, None)
    return resource


def tolerate(mapping: Mapping, body: Any) -> Any:
    """What the original LUI backend accepted in a resource body: ``email`` for ``emails``, and typed
    values of a type this server does not store (``"type": "home"`` for a mail) as the attribute's
    first type. Used on the LUI mount only; the strict mount refuses both."""
    if not isinstance(body, MappingABC):
        return body
    body = dict(body)
    alias = next((k for k in body if isinstance(k, str) and k.lower() == "email"), None)
    if alias is not None and mapping.core.attribute("emails") is not None:
        value = body.pop(alias)
        items = value if isinstance(value, list) else [value]
        items = [item if isinstance(item, MappingABC) else {"value": item} for item in items]
        existing = body.get("emails")
        body["emails"] = (existing if isinstance(existing, list) else []) + items
    for key, value in list(body.items()):
        attribute = mapping.core.attribute(key) if isinstance(key, str) else None
        if attribute is None or not attribute.by_type or not isinstance(value, list):
            continue
        known = {t.lower() for t, _ in attribute.by_type}
        body[key] = [{k: v for k, v in item.items() if k.lower() != "type"}
                     if isinstance(item, MappingABC) and str(item.get("type", "")).lower() not in known
                     and item.get("type") is not None else item for item in value]
    return body


def tolerate_patch(mapping: Mapping, body: Any) -> Any:
    """:func:`tolerate` for the values of a PatchOp's operations (path-less, or path ``email``/``emails``)."""
    if not isinstance(body, MappingABC) or not isinstance(body.get("Operations"), list):
        return body
    operations = []
    for operation in body["Operations"]:
        if isinstance(operation, MappingABC):
            operation = dict(operation)
            path = operation.get("path")
            if path is None:
                operation["value"] = tolerate(mapping, operation.get("value"))
            elif isinstance(path, str) and path.lower() in ("email", "emails"):
                operation["path"] = "emails"
                operation["value"] = tolerate(mapping, {"emails": operation.get("value")}).get("emails")
        operations.append(operation)
    return {**body, "Operations": operations}


def encode_cursor(entry_uuid: str) -> str:
    """The opaque cursor (RFC 9865) after the resource whose ``entryUUID`` is given."""
    return base64.urlsafe_b64encode(f"after:{entry_uuid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """``""`` -> None (the first page); a cursor from :func:`encode_cursor` -> its entryUUID;
    anything else is a 400 ``invalidCursor`` (RFC 9865)."""
    if cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    prefix, _, entry_uuid = text.partition(":")
    if prefix != "after" or not _UUID.fullmatch(entry_uuid):
        raise ScimError(f"cursor {cursor[:40]!r} was not given by this server", status=400, scim_type="invalidCursor")
    return entry_uuid


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _filter_attributes(node) -> list[str]:
    """The LDAP attributes an LDAP filter built with didmos_ldap.filters names."""
    if hasattr(node, "attr"):
        return [node.attr]
    if hasattr(node, "parts"):
        return [a for part in node.parts for a in _filter_attributes(part)]
    if hasattr(node, "part"):
        return _filter_attributes(node.part)
    return []


def _reference_in_dn(dn: str, containers: dict[str, str]) -> tuple[str, None, str] | None:
    """``didmosUUID=<id>,<people or groups container>`` -> (id, no display, type); else None."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return None
    if not rdns or len(rdns[0]) != 1 or rdns[0][0][0].lower() != "didmosuuid":
        return None
    type_name = containers.get(normalize_dn(ldap.dn.dn2str(rdns[1:])))
    return (rdns[0][0][1], None, type_name) if type_name else None
