"""The interactive API documentation page: flask-smorest's Swagger UI page on ``/openapi.json``.

The page is flask-smorest's (``OPENAPI_SWAGGER_UI_PATH``); its scripts and styles are Swagger UI's own
files, shipped in the ``flask-swagger-ui`` distribution and served by didmos under
``<api.docs_path>/assets/``, so the page works on networks without internet access. ``api.docs_assets_url``
points the page elsewhere (a CDN) instead; an empty ``api.docs_path`` turns the page off.
"""

from __future__ import annotations

import importlib.util
import posixpath
from pathlib import Path
from typing import Any

import flask

#: The folder of Swagger UI's files (swagger-ui-bundle.js, swagger-ui.css, ...); only the files are used,
#: not the package's own blueprint.
SWAGGER_UI_DIST = Path(importlib.util.find_spec("flask_swagger_ui").submodule_search_locations[0]) / "dist"


def configure(app: flask.Flask, settings: Any) -> None:
    """Set flask-smorest's page settings and serve the page's files. Call before ``Api(app)``."""
    path = settings.api.docs_path
    if not path:
        return
    path = "/" + path.strip("/")
    assets_url = settings.api.docs_assets_url
    if not assets_url:
        # Relative to the page (``/docs`` -> ``docs/assets/``), so it also works below a proxy's prefix.
        assets_url = posixpath.basename(path) + "/assets/"
        assets = flask.Blueprint("api_docs_assets", __name__)

        @assets.get(f"{path}/assets/<path:filename>")
        def asset(filename: str):
            # send_from_directory refuses paths that leave the folder (404), like any unknown file.
            return flask.send_from_directory(SWAGGER_UI_DIST, filename, max_age=86400)

        app.register_blueprint(assets)
    elif not assets_url.endswith("/"):
        assets_url += "/"
    app.config.update(
        OPENAPI_SWAGGER_UI_PATH=path,
        OPENAPI_SWAGGER_UI_URL=assets_url,
        OPENAPI_SWAGGER_UI_CONFIG={"deepLinking": True, "displayRequestDuration": True},
    )
