"""SCIM discovery (RFC 7644 section 4): documents built from the registered types and their mappings."""

import pytest

from didmos_host import hookimpl
from didmos_host.api import Blueprint
from didmos_host.records import ResourceType
from didmos_scim.discovery import ProviderLimits, discovery, resource_types, schemas, service_provider_config
from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, GROUP, LUI, ORGANIZATION, USER, Attribute, Mapping, Schema
from didmos_scim.plugin import RESOURCE_TYPES
from didmos_scim.resources import MAX_RESULTS

BASE = "https://idm.example.org/scim/v2"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SCIM_JSON = "application/scim+json"
#: The characteristics RFC 7643 section 7 gives every attribute definition.
CHARACTERISTICS = {"name", "type", "multiValued", "description", "required", "caseExact", "mutability",
                   "returned", "uniqueness"}
PATHS = ["/scim/v2/ServiceProviderConfig", "/scim/v2/ResourceTypes", "/scim/v2/ResourceTypes/User",
         "/scim/v2/Schemas", f"/scim/v2/Schemas/{USER}"]

BUILT_IN = [(resource_type, DEFAULT_MAPPINGS[resource_type.name]) for resource_type in RESOURCE_TYPES]

DEVICE = "urn:example:scim:schemas:device:2.0"
DEVICE_TYPE = ResourceType(name="Device", endpoint="/Devices", schema=DEVICE, object_classes=("device",),
                           base="ldap.base_dn", extensions=(LUI,), description="A registered device")
DEVICE_MAPPING = Mapping(Schema(DEVICE, "Device", "A registered device", (
    Attribute("serialNumber", "string", "serialNumber", required=True, case_exact=True, uniqueness="server"),
    Attribute("owner", "complex", "owner", sub_attributes=(
        Attribute("value", "string"), Attribute("$ref", "reference", reference_types=("User",)),
    )),
)), (DEFAULT_MAPPINGS["User"].schema(LUI),), ("device",))


def by_name(documents):
    return {document["name"]: document for document in documents}


# -- the documents, from the mappings ------------------------------------------------------------------

def test_the_service_provider_config_announces_the_features_and_limits():
    document = service_provider_config(ProviderLimits(), BASE)
    assert document["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"]
    for feature in ("patch", "bulk", "filter", "changePassword", "sort", "etag"):
        assert document[feature]["supported"] is True
    assert document["bulk"] == {"supported": True, "maxOperations": 1000, "maxPayloadSize": 1048576}
    assert document["filter"] == {"supported": True, "maxResults": 1000}
    assert [scheme["type"] for scheme in document["authenticationSchemes"]] == ["httpbasic"]
    basic = document["authenticationSchemes"][0]
    assert basic["name"] == "HTTP Basic" and basic["description"] and basic["primary"] is True
    assert document["pagination"] == {"cursor": True, "index": True, "defaultPaginationMethod": "index",
                                      "defaultPageSize": 100, "maxPageSize": 1000}
    assert document["meta"] == {"resourceType": "ServiceProviderConfig", "location": f"{BASE}/ServiceProviderConfig"}


def test_the_limits_are_parameters():
    limits = ProviderLimits(max_operations=10, max_payload_size=2048, max_results=50, default_page_size=5,
                            max_page_size=50, cursor_pagination=True, cursor_timeout=60)
    document = service_provider_config(limits, BASE)
    assert document["bulk"]["maxOperations"] == 10 and document["bulk"]["maxPayloadSize"] == 2048
    assert document["filter"]["maxResults"] == 50
    assert document["pagination"]["cursor"] is True and document["pagination"]["cursorTimeout"] == 60
    assert document["pagination"]["defaultPageSize"] == 5 and document["pagination"]["maxPageSize"] == 50


def test_a_resource_type_for_each_registered_type():
    documents = by_name(resource_types(BUILT_IN, BASE))
    assert list(documents) == ["User", "Group", "Organization"]
    user = documents["User"]
    assert user["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"]
    assert user["id"] == "User" and user["endpoint"] == "/Users" and user["schema"] == USER
    assert user["description"] == "User Account"
    assert user["schemaExtensions"] == [{"schema": ENTERPRISE, "required": False}, {"schema": LUI, "required": False}]
    assert user["meta"] == {"resourceType": "ResourceType", "location": f"{BASE}/ResourceTypes/User"}
    assert documents["Group"]["schema"] == GROUP and documents["Organization"]["endpoint"] == "/Organizations"
    assert all(extension["required"] is False for document in documents.values()
               for extension in document["schemaExtensions"])


def test_the_schemas_and_extensions_come_from_the_mapping_the_api_serves():
    extra = Schema("urn:example:extra", "Extra", "added by a customer mapping", (Attribute("note"),))
    mapping = DEFAULT_MAPPINGS["Group"]
    customised = Mapping(mapping.core, (*mapping.extensions, extra), mapping.object_classes)
    group_type = next(t for t in RESOURCE_TYPES if t.name == "Group")
    document, = resource_types([(group_type, customised)], BASE)
    assert [e["schema"] for e in document["schemaExtensions"]] == [LUI, "urn:example:extra"]
    assert all(e["required"] is False for e in document["schemaExtensions"])


def test_each_schema_urn_appears_once():
    documents = schemas([mapping for _, mapping in BUILT_IN], BASE)
    assert [d["id"] for d in documents] == [USER, ENTERPRISE, LUI, GROUP, ORGANIZATION]  # LUI: 3 types, once
    for document in documents:
        assert document["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:Schema"]
        assert document["name"] and document["description"]
        assert document["meta"] == {"resourceType": "Schema", "location": f"{BASE}/Schemas/{document['id']}"}


def assert_described(attribute: Attribute, document: dict):
    """``document`` describes ``attribute`` and each of its sub-attributes, recursively."""
    assert set(document) >= CHARACTERISTICS, f"{attribute.name}: missing {CHARACTERISTICS - set(document)}"
    assert (document["name"], document["type"], document["multiValued"], document["required"],
            document["caseExact"], document["mutability"], document["returned"], document["uniqueness"],
            document["description"]) == (
        attribute.name, attribute.type, attribute.multi_valued, attribute.required, attribute.case_exact,
        attribute.mutability, attribute.returned, attribute.uniqueness, attribute.description)
    if attribute.type == "complex":
        assert [s["name"] for s in document["subAttributes"]] == [s.name for s in attribute.sub_attributes]
        for sub, sub_document in zip(attribute.sub_attributes, document["subAttributes"]):
            assert_described(sub, sub_document)
    else:
        assert "subAttributes" not in document
    if attribute.type == "reference":
        assert document["referenceTypes"] == list(attribute.reference_types)
    else:
        assert "referenceTypes" not in document


def test_every_attribute_the_mappings_declare_is_described():
    documents = {d["id"]: d for d in schemas([mapping for _, mapping in BUILT_IN], BASE)}
    for _, mapping in BUILT_IN:
        for schema in mapping.schemas:
            described = documents[schema.id]["attributes"]
            assert [d["name"] for d in described] == [a.name for a in schema.attributes]
            for attribute, document in zip(schema.attributes, described):
                assert_described(attribute, document)


def test_typed_values_references_and_dn_references():
    user = {d["id"]: d for d in schemas([DEFAULT_MAPPINGS["User"]], BASE)}
    attributes = by_name(user[USER]["attributes"])
    phone_type = by_name(attributes["phoneNumbers"]["subAttributes"])["type"]
    assert phone_type["canonicalValues"] == ["work", "mobile", "home", "fax", "pager"]
    assert by_name(attributes["emails"]["subAttributes"])["type"]["canonicalValues"] == ["work"]
    assert "type" not in by_name(attributes["addresses"]["subAttributes"])  # one address is kept, untyped
    assert attributes["profileUrl"]["referenceTypes"] == ["external"]
    assert attributes["userName"]["required"] is True and attributes["userName"]["uniqueness"] == "server"
    assert attributes["password"]["mutability"] == "writeOnly" and attributes["password"]["returned"] == "never"
    groups = attributes["groups"]  # stored as memberOf DNs: still a complex attribute to clients
    assert groups["type"] == "complex" and groups["multiValued"] is True and groups["mutability"] == "readOnly"
    assert by_name(groups["subAttributes"])["$ref"]["referenceTypes"] == ["Group"]
    manager = by_name(user[ENTERPRISE]["attributes"])["manager"]
    assert manager["type"] == "complex" and [s["name"] for s in manager["subAttributes"]] == \
        ["value", "$ref", "displayName"]


def test_a_urn_two_mappings_define_differently_is_merged_by_attribute_name():
    lui = DEFAULT_MAPPINGS["User"].schema(LUI)
    users = DEFAULT_MAPPINGS["User"].with_attribute(LUI, Attribute("userNote"))
    groups = DEFAULT_MAPPINGS["Group"].with_attribute(LUI, Attribute("groupNote")).with_attribute(
        LUI, Attribute("userNote", "integer"))  # the same name, defined differently: the first type's wins
    document, = [d for d in schemas([users, groups], BASE) if d["id"] == LUI]
    names = [a["name"] for a in document["attributes"]]
    assert names == [*(a.name for a in lui.attributes), "userNote", "groupNote"]
    assert by_name(document["attributes"])["userNote"]["type"] == "string"


@pytest.mark.parametrize("urn_case", [str.upper, str.lower])
def test_urns_are_compared_case_insensitively(urn_case):
    other = DEFAULT_MAPPINGS["Group"]
    shouting = Mapping(other.core, (Schema(urn_case(LUI), "LUI", "x", (Attribute("extra"),)),))
    documents = schemas([DEFAULT_MAPPINGS["User"], shouting], BASE)
    assert sum(d["id"].lower() == LUI for d in documents) == 1


def test_the_documents_are_valid_for_a_scim_library():
    import scim2_models as models
    models.ServiceProviderConfig.model_validate(service_provider_config(ProviderLimits(), BASE))
    for document in resource_types([*BUILT_IN, (DEVICE_TYPE, DEVICE_MAPPING)], BASE):
        models.ResourceType.model_validate(document)
    for document in schemas([*(m for _, m in BUILT_IN), DEVICE_MAPPING], BASE):
        models.Schema.model_validate(document)


# -- the endpoints -------------------------------------------------------------------------------------

class WithDiscovery:
    """Registers the discovery blueprint unless an installed plugin already does (plugin.py, once it lists it)."""

    @hookimpl(wrapper=True)
    def didmos_blueprints(self, app):
        found = yield
        if not any(blueprint.name == discovery.name for blueprints in found for blueprint in blueprints or ()):
            found.append([discovery])
        return found


class ShoeSizes:
    """A customer plugin editing mappings, as in docs/scim.md."""

    @hookimpl(wrapper=True)
    def didmos_attribute_mapping(self, resource_type):
        mapping = yield
        if resource_type.name == "User":
            mapping = mapping.with_attribute(USER, Attribute("shoeSize", "integer", "didmosShoeSize",
                                                             description="EU shoe size"))
        if resource_type.name == "Group":
            mapping = mapping.with_attribute(LUI, Attribute("delegates", "string", multi_valued=True))
        return mapping


class Devices:
    """A plugin that adds a resource type with its own schema, and one that SCIM does not map."""

    @hookimpl
    def didmos_resource_types(self):
        return [DEVICE_TYPE, ResourceType(name="Printer", endpoint="/Printers", schema="urn:example:printer",
                                          object_classes=("device",), base="ldap.base_dn")]

    @hookimpl(tryfirst=True)
    def didmos_attribute_mapping(self, resource_type):
        return DEVICE_MAPPING if resource_type.name == "Device" else None


create_routes = Blueprint("test_scim_create", __name__, url_prefix="/scim/v2")


@create_routes.route("/<endpoint>", methods=["POST"])
def create(endpoint):
    return {"created": endpoint}, 201


@create_routes.route("/<endpoint>/<resource_id>", methods=["PUT", "PATCH", "DELETE"])
def change(endpoint, resource_id):
    return {"changed": endpoint}, 200


class CreateRoutes:
    """Stands for the coming write routes of resources.py: variable rules that take POST, PUT, PATCH, DELETE."""

    @hookimpl
    def didmos_blueprints(self, app):
        return [create_routes]


@pytest.fixture
def make_scim_app(make_app):
    return lambda *plugins: make_app(WithDiscovery(), *plugins)


@pytest.fixture
def client(make_scim_app):
    return make_scim_app().test_client()


def test_the_service_provider_config_answers_without_credentials(client):
    response = client.get("/scim/v2/ServiceProviderConfig")
    assert response.status_code == 200 and response.content_type == SCIM_JSON
    body = response.json
    assert body["meta"]["location"] == "http://localhost/scim/v2/ServiceProviderConfig"
    assert body["filter"]["maxResults"] == MAX_RESULTS and body["pagination"]["maxPageSize"] == MAX_RESULTS
    assert body["bulk"]["maxPayloadSize"] == client.application.config["MAX_CONTENT_LENGTH"]
    assert body["authenticationSchemes"][0]["type"] == "httpbasic"


def test_the_resource_types_are_a_list_response(client):
    response = client.get("/scim/v2/ResourceTypes")
    assert response.status_code == 200 and response.content_type == SCIM_JSON
    body = response.json
    assert body["schemas"] == [LIST_RESPONSE] and body["startIndex"] == 1
    assert body["totalResults"] == body["itemsPerPage"] == len(body["Resources"]) >= 3
    assert {"User", "Group", "Organization"} <= {r["id"] for r in body["Resources"]}
    user = client.get("/scim/v2/ResourceTypes/User")
    assert user.status_code == 200 and user.content_type == SCIM_JSON
    assert user.json == next(r for r in body["Resources"] if r["id"] == "User")
    assert user.json["meta"]["location"] == "http://localhost/scim/v2/ResourceTypes/User"
    # the LUI extension belongs to /lui2_backend/v2: its URN cannot be addressed in RFC 7644 paths
    assert user.json["schemaExtensions"] == [{"schema": ENTERPRISE, "required": False}]


def test_the_schemas_are_a_list_response(client):
    body = client.get("/scim/v2/Schemas").json
    assert body["schemas"] == [LIST_RESPONSE] and body["startIndex"] == 1
    ids = [r["id"] for r in body["Resources"]]
    assert len(ids) == len(set(ids)) == body["totalResults"] == body["itemsPerPage"]
    assert {USER, ENTERPRISE, GROUP, ORGANIZATION} <= set(ids) and LUI not in ids
    user = client.get(f"/scim/v2/Schemas/{USER}")
    assert user.status_code == 200 and user.content_type == SCIM_JSON
    assert user.json["meta"]["location"] == f"http://localhost/scim/v2/Schemas/{USER}"
    assert [a["name"] for a in user.json["attributes"]] == [a.name for a in DEFAULT_MAPPINGS["User"].core.attributes]
    assert client.get(f"/scim/v2/Schemas/{ENTERPRISE.upper()}").json["id"] == ENTERPRISE
    assert client.get(f"/scim/v2/Schemas/{LUI}").status_code == 404


@pytest.mark.parametrize("path", ["/scim/v2/ResourceTypes/Printer", "/scim/v2/ResourceTypes/Users",
                                  "/scim/v2/Schemas/urn:example:unknown", "/scim/v2/Schemas/User"])
def test_unknown_types_and_schemas_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.content_type == SCIM_JSON
    assert response.json["schemas"] == [ERROR] and response.json["status"] == "404" and response.json["detail"]


def test_a_mapping_a_plugin_changes_is_described(make_scim_app):
    client = make_scim_app(ShoeSizes()).test_client()
    shoe_size = by_name(client.get(f"/scim/v2/Schemas/{USER}").json["attributes"])["shoeSize"]
    assert shoe_size["type"] == "integer" and shoe_size["description"] == "EU shoe size"
    group = client.get("/scim/v2/ResourceTypes/Group").json  # the Group mapping's LUI edit: not published
    assert group["schemaExtensions"] == []


def test_a_resource_type_a_plugin_adds_is_described(make_scim_app):
    client = make_scim_app(Devices()).test_client()
    device = client.get("/scim/v2/ResourceTypes/Device").json
    assert device["endpoint"] == "/Devices" and device["schema"] == DEVICE
    assert device["schemaExtensions"] == []
    schema = client.get(f"/scim/v2/Schemas/{DEVICE}").json
    assert [a["name"] for a in schema["attributes"]] == ["serialNumber", "owner"]
    assert by_name(schema["attributes"])["serialNumber"]["caseExact"] is True
    listed = client.get("/scim/v2/ResourceTypes").json
    assert "Printer" not in {r["id"] for r in listed["Resources"]}  # no SCIM mapping: not served by SCIM
    assert client.get("/scim/v2/ResourceTypes/Printer").status_code == 404


@pytest.mark.parametrize("plugins", [(), (CreateRoutes(),)], ids=["alone", "with-variable-write-routes"])
def test_other_methods_are_405(make_scim_app, plugins):
    client = make_scim_app(*plugins).test_client()
    for path in PATHS:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            response = client.open(path, method=method, json={"schemas": []})
            assert response.status_code == 405, (method, path, response.json)
            assert response.content_type == SCIM_JSON and response.headers["Allow"] == "GET, HEAD, OPTIONS"
            assert response.json["schemas"] == [ERROR] and response.json["status"] == "405"
        options = client.options(path)
        assert options.status_code == 200 and options.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert client.head(path).status_code == 200
    if plugins:  # the variable rules still answer for real resource types
        assert client.post("/scim/v2/Users", json={}).status_code == 201


@pytest.mark.parametrize("path", PATHS)
def test_a_filter_is_refused_with_403(client, path):
    response = client.get(path, query_string={"filter": 'name eq "User"'})
    assert response.status_code == 403 and response.content_type == SCIM_JSON
    assert response.json["schemas"] == [ERROR] and response.json["status"] == "403"
    assert "filter" in response.json["detail"]


def test_paging_parameters_are_ignored(client):
    body = client.get("/scim/v2/Schemas", query_string={"startIndex": 3, "count": 1, "sortBy": "name"}).json
    assert body["startIndex"] == 1 and body["itemsPerPage"] == body["totalResults"] == len(body["Resources"]) > 1


def test_the_discovery_routes_are_in_the_openapi_document_without_the_refusals(client):
    paths = client.get("/openapi.json").json["paths"]
    assert set(paths["/scim/v2/Schemas"]) == {"get"}
    assert set(paths["/scim/v2/ServiceProviderConfig"]) == {"get"}


def test_scim2_tester_finds_the_discovery_endpoints_compliant(make_scim_app):
    import scim2_tester as tester
    import scim2_client.engines.wsgi as engines
    client = engines.WSGISCIMClient(make_scim_app(), base_url="http://localhost/scim/v2")  # no credentials
    results = [r for r in tester.check_server(client, include_tags={"discovery"}) if "discovery" in r.tags]
    passed = {tester.Status.SUCCESS, tester.Status.COMPLIANT, tester.Status.ACCEPTABLE}
    failed = [f"{r.status.name} {r.title}: {r.reason}" for r in results if r.status not in passed]
    assert results and not failed, "\n".join(failed)
