import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db

KEY_OPERATIONS = {
    ("/api/v1/keys/", "get"): "api_keys_list",
    ("/api/v1/keys/", "post"): "api_keys_create",
    ("/api/v1/keys/{public_id}/", "get"): "api_keys_retrieve",
    ("/api/v1/keys/{public_id}/", "put"): "api_keys_update",
    ("/api/v1/keys/{public_id}/", "patch"): "api_keys_partial_update",
    ("/api/v1/keys/{public_id}/", "delete"): "api_keys_destroy",
    ("/api/v1/keys/{public_id}/regenerate/", "post"): "api_keys_regenerate",
    ("/api/v1/keys/{public_id}/reveal/", "post"): "api_keys_reveal",
    ("/api/v1/keys/{public_id}/changes/", "get"): "api_keys_changes",
}


def test_the_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    # --fail-on-warn turns any spectacular warning (for any app's endpoint) into an error.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    for (path, method), operation_id in KEY_OPERATIONS.items():
        operation = schema["paths"][path][method]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["API keys"]
    parameter = schema["paths"]["/api/v1/keys/{public_id}/"]["get"]["parameters"][0]
    assert parameter["schema"] == {"type": "string", "format": "uuid"}


def test_only_the_secret_bearing_answers_document_a_key(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    components = schema["components"]["schemas"]
    assert "key" not in components["ApiKey"]["properties"]
    assert "key" in components["ApiKeyWithSecret"]["properties"]

    def response_ref(path, method, status):
        content = schema["paths"][path][method]["responses"][status]["content"]
        return content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]

    assert response_ref("/api/v1/keys/", "post", "201") == "ApiKeyWithSecret"
    assert response_ref("/api/v1/keys/{public_id}/reveal/", "post", "200") == "ApiKeyWithSecret"
    assert response_ref("/api/v1/keys/{public_id}/", "get", "200") == "ApiKey"
    assert response_ref("/api/v1/keys/{public_id}/", "patch", "200") == "ApiKey"


def test_the_schema_and_swagger_ui_are_served_offline(client):
    assert client.get("/api/schema/").status_code == 200
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower()
    # The start-up script is a separate file, allowed by the CSP ("script-src 'self'").
    assert "<script>" not in html
    script = client.get("/api/docs/?script=")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()
