"""A resource type of our own, Device, and an endpoint of our own next to it.

* ``/scim/v2/Devices``: the SCIM plugin serves every registered resource type that has a mapping, with
  the same filters, paging, PATCH, ETags and PDP decisions as Users (the superadmin's role grants every
  resource type; give other roles permissions with ``didmosResourceType: Device``).
* ``/{{ cookiecutter.plugin_name }}/v1/devices/report``: a flask-smorest blueprint (it appears in
  ``/openapi.json``), authorized by ``Host.authorize``, i.e. by every plugin's ``didmos_authorize`` vote.
"""

from __future__ import annotations

from didmos_host.api import Blueprint, MethodView, Schema, fields
from didmos_host.app import current_actor, current_host
from didmos_host.errors import Forbidden
from didmos_host.records import Action, ResourceType
from didmos_scim.mapping import Attribute, Mapping
from didmos_scim.mapping import Schema as ScimSchema

DEVICE_SCHEMA = "urn:{{ cookiecutter.ldap_prefix }}:params:scim:schemas:core:1.0:Device"

DEVICE = ResourceType(
    name="Device",
    endpoint="/Devices",
    schema=DEVICE_SCHEMA,
    # "device" is in OpenLDAP's core schema (MUST cn, MAY serialNumber, owner, description, ...).
    object_classes=("device", "didmosObject"),
    base="{{ cookiecutter.plugin_name }}.devices_dn",  # a settings key: new devices go there
    description="Devices handed out to staff",
)

DEVICE_MAPPING = Mapping(
    ScimSchema(DEVICE_SCHEMA, "Device", "A device handed out to staff", (
        Attribute("name", "string", "cn", required=True, description="The device's name, such as 'laptop-0042'"),
        Attribute("serialNumber", "string", "serialNumber", description="The manufacturer's serial number"),
        Attribute("description", "string", "description"),
        # A reference: LDAP keeps the owner's DN, SCIM shows and takes its id (as the User's manager).
        Attribute("owner", "complex", "owner", sub_attributes=(
            Attribute("value", "string"),
            Attribute("$ref", "reference", reference_types=("User",)),
            Attribute("displayName", "string", mutability="readOnly", returned="request"),
        ), description="The user the device is handed out to"),
    )),
    object_classes=DEVICE.object_classes,
)

blueprint = Blueprint("{{ cookiecutter.plugin_name }}_devices", __name__,
                      url_prefix="/{{ cookiecutter.plugin_name }}/v1/devices",
                      description="{{ cookiecutter.customer_name }}: devices")


class ReportSchema(Schema):
    devices = fields.Integer(metadata={"description": "How many devices there are"})
    assigned = fields.Integer(metadata={"description": "How many of them have an owner"})
    unassigned = fields.List(fields.String(), metadata={"description": "Names of the devices without owner, sorted"})


@blueprint.route("/report")
class Report(MethodView):
    @blueprint.response(200, ReportSchema)
    def get(self):
        """How many devices there are, how many are assigned, and which are not.

        Needs ``read`` on ``Device`` (the device container as target): the PDP allows it to roles that
        grant it; this plugin's vote also allows members of ``{{ cookiecutter.plugin_name }}.managers_group_dn``
        and denies the userTypes of ``{{ cookiecutter.plugin_name }}.report_denied_user_types``.
        """
        host = current_host()
        actor = current_actor()  # 401 with the Basic challenge when there are no credentials
        devices_dn = host.settings.{{ cookiecutter.plugin_name }}.devices_dn
        if not host.authorize(actor, Action("read", DEVICE.name, devices_dn)):
            raise Forbidden("not allowed to read the device report")
        found = host.service("directory").search(devices_dn, "(objectClass=device)", attrs=["cn", "owner"])
        unassigned = sorted(entry.first("cn") for entry in found if not entry.values("owner"))
        return {"devices": len(found), "assigned": len(found) - len(unassigned), "unassigned": unassigned}
