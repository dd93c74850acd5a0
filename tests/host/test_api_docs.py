"""The OpenAPI document of every API, valid OpenAPI 3.1, and the interactive page that shows it."""

import re
from urllib.parse import urljoin

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from didmos_host.apidocs import SWAGGER_UI_DIST
from didmos_host.app import create_app
from didmos_host.errors import ConfigError


@pytest.fixture(scope="module")
def client():
    # Every installed plugin; no server is needed to build the app and its document.
    return create_app().test_client()


def test_the_document_of_every_api_is_valid_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.json
    assert document["openapi"] == "3.1.0"
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
              for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert not errors, "\n".join(errors)
    paths = set(document["paths"])
    for prefix in ("/scim/v2/", "/lui2_backend/v2/", "/pdp/v1/", "/tasks/v1/", "/auth/", "/oauth/"):
        assert any(path.startswith(prefix) for path in paths), f"no {prefix} route in /openapi.json"
    assert {"/healthz", "/readyz"} <= paths
    assert set(document["paths"]["/readyz"]["get"]["responses"]) >= {"200", "503"}
    # The page's "Authorize" applies credentials only to operations that declare a security requirement.
    schemes = document["components"]["securitySchemes"]
    assert {"basicAuth", "bearerAuth"} <= set(schemes)
    assert document["security"] == [*({name: []} for name in schemes), {}]


def test_the_docs_page_is_swagger_ui_on_the_document_with_its_files_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '"/openapi.json"' in html  # Swagger UI loads the document from here
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"docs/assets/swagger-ui-bundle.js", "docs/assets/swagger-ui.css"} <= set(assets)
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), f"{asset} would need the internet"
        url = urljoin("http://localhost/docs", asset)  # as the browser resolves it
        response = client.get(url.removeprefix("http://localhost"))
        assert response.status_code == 200 and len(response.data) > 1000, url
        response.close()
    # Swagger UI 5 renders OpenAPI 3.1; version 4 refuses such a document.
    assert (SWAGGER_UI_DIST / "VERSION").read_text().strip().startswith("v5")


@pytest.mark.parametrize("path", ["/docs/assets/no-such-file.js", "/docs/assets/../../../etc/passwd",
                                  "/docs/assets/%2e%2e/%2e%2e/etc/passwd", "/docs/assets/"])
def test_unknown_or_escaping_asset_paths_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"root:" not in response.data


def test_the_page_moves_with_api_docs_path():
    client = create_app(api={"docs_path": "/api/docs/"}).test_client()
    html = client.get("/api/docs").get_data(as_text=True)
    assert 'src="docs/assets/swagger-ui-bundle.js"' in html  # relative: /api/docs/assets/...
    assert client.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs").status_code == 404


def test_an_empty_docs_path_turns_the_page_off():
    app = create_app(api={"docs_path": ""})
    client = app.test_client()
    assert client.get("/docs").status_code == 404
    assert client.get("/docs/assets/swagger-ui.css").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_docs_assets_url_points_the_page_elsewhere():
    client = create_app(api={"docs_assets_url": "https://cdn.example.org/swagger-ui-dist@5"}).test_client()
    html = client.get("/docs").get_data(as_text=True)
    assert 'src="https://cdn.example.org/swagger-ui-dist@5/swagger-ui-bundle.js"' in html
    assert client.get("/docs/assets/swagger-ui.css").status_code == 404  # nothing served locally then


@pytest.mark.parametrize("value", ["docs", "/", "/do cs", 5])
def test_a_bad_docs_path_names_the_setting(value):
    with pytest.raises(ConfigError, match="api.docs_path must be empty"):
        create_app(api={"docs_path": value})
