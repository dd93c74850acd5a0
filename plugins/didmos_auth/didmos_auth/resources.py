"""``GET /auth/whoami``: who the credentials of this request belong to (a way to check them)."""

from __future__ import annotations

from didmos_host.api import Blueprint, MethodView, Schema, fields
from didmos_host.app import current_actor

blueprint = Blueprint("auth", __name__, url_prefix="/auth", description="Authentication")


class ActorSchema(Schema):
    dn = fields.String(metadata={"description": "DN of the entry the credentials belong to"})
    id = fields.String(metadata={"description": "Its didmosUUID (the SCIM id)"})
    tenant = fields.String(allow_none=True, metadata={"description": "Its tenant"})
    method = fields.String(metadata={"description": "How the request was authenticated (basic, ...)"})


@blueprint.route("/whoami")
class WhoAmI(MethodView):
    @blueprint.response(200, ActorSchema)
    def get(self):
        """The authenticated actor; 401 with a challenge without valid credentials."""
        actor = current_actor()
        return {"dn": actor.dn, "id": actor.uuid, "tenant": actor.tenant, "method": actor.method}
