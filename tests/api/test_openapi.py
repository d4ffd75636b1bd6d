"""The API describes itself, and its answers fit Wavix's own OpenAPI documents.

``openapi/`` holds Wavix's definitions of ``/v1/api-keys`` in both generations
(copies of ``wavix-openapi-api-keys-*.yaml`` from the shared spec). Real answers
are checked against their ``ApiKey`` schemas by :func:`violations`, a small
checker for the part of JSON Schema those documents use.
"""

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET, Tenant, bearer, create_key
from tests.wavix import GROUPS

KEYS = "/v1/api-keys"
WAVIX_DOCUMENTS = Path(__file__).parent / "openapi"
GENERATIONS = ("current", "seed-era")
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
FLAGS = (
    "is_active",
    "active",
    "is_restriction",
    "restricted",
    "is_scopes_enabled",
    "scopes_enabled",
)

# operationId -> (method, path, statuses it must document)
OPERATIONS = {
    "api_keys_list": ("get", "/v1/api-keys", {200, 401, 403}),
    "api_keys_create": ("post", "/v1/api-keys", {200, 400, 401, 403, 422}),
    "api_keys_get": ("get", "/v1/api-keys/{id}", {200, 401, 403, 404}),
    "api_keys_update": ("patch", "/v1/api-keys/{id}", {200, 400, 401, 403, 404, 422}),
    "api_keys_delete": ("delete", "/v1/api-keys/{id}", {200, 401, 403, 404}),
    "api_keys_activate": ("patch", "/v1/api-keys/{id}/activate", {200, 401, 403, 404}),
    "api_keys_deactivate": ("patch", "/v1/api-keys/{id}/deactivate", {200, 401, 403, 404}),
}
SUCCESS_SCHEMAS: dict[str, dict[str, Any]] = {
    "api_keys_list": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}},
    "api_keys_create": {"$ref": "#/components/schemas/ApiKey"},
    "api_keys_get": {"$ref": "#/components/schemas/ApiKey"},
    "api_keys_update": {"$ref": "#/components/schemas/ApiKey"},
    "api_keys_delete": {"$ref": "#/components/schemas/SuccessResponse"},
    "api_keys_activate": {"$ref": "#/components/schemas/SuccessResponse"},
    "api_keys_deactivate": {"$ref": "#/components/schemas/SuccessResponse"},
}
ERROR_BODIES = ({"success", "message"}, {"success", "error", "message"})


# -- a small JSON Schema checker -------------------------------------------------------

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def resolve(document: dict[str, Any], reference: str) -> dict[str, Any]:
    """The part of ``document`` a local ``$ref`` such as ``#/components/schemas/X`` names."""
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def has_type(value: object, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, JSON_TYPES[name])


def violations(
    value: object, schema: dict[str, Any], document: dict[str, Any], where: str = "$"
) -> list[str]:
    """How ``value`` breaks ``schema``: ``$ref``, ``allOf``, ``anyOf``, ``type``, ``enum``,
    ``format: date-time``, ``required``, ``properties``, ``additionalProperties: false``
    and ``items``, which is every keyword the Wavix documents use."""
    if "$ref" in schema:
        return violations(value, resolve(document, schema["$ref"]), document, where)
    problems: list[str] = []
    for part in schema.get("allOf", []):
        problems += violations(value, part, document, where)
    options = schema.get("anyOf", [])
    if options and all(violations(value, option, document, where) for option in options):
        problems.append(f"{where}: matches no anyOf option")
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and not any(has_type(value, name) for name in types):
        return [*problems, f"{where}: {value!r} is not {' or '.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    is_text = isinstance(value, str)
    if schema.get("format") == "date-time" and is_text and not DATE_TIME.fullmatch(str(value)):
        problems.append(f"{where}: {value!r} is not a date-time")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        missing = [name for name in schema.get("required", []) if name not in value]
        problems += [f"{where}: {name} is missing" for name in missing]
        for name, item in value.items():
            if name in properties:
                problems += violations(item, properties[name], document, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: {name} is not allowed")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += violations(item, schema["items"], document, f"{where}[{index}]")
    return problems


@cache
def wavix_document(generation: str) -> dict[str, Any]:
    text = (WAVIX_DOCUMENTS / f"wavix-openapi-api-keys-{generation}.yaml").read_text("utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def wavix_violations(generation: str, schema_name: str, value: object) -> list[str]:
    document = wavix_document(generation)
    return violations(value, document["components"]["schemas"][schema_name], document)


def assert_fits_exactly(body: object, generation: str, schema_name: str) -> None:
    """``body`` has every property of the schema, nothing else, each of the right type."""
    schema = wavix_document(generation)["components"]["schemas"][schema_name]
    assert isinstance(body, dict)
    assert set(body) == set(schema["properties"])
    assert wavix_violations(generation, schema_name, body) == []


# -- helpers -------------------------------------------------------------------------------


def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operation(document: dict[str, Any], operation_id: str) -> tuple[str, str, dict[str, Any]]:
    """The method, path template (parameters spelled ``{id}``) and object of an operation."""
    found = [
        (method, re.sub(r"\{[^}]+\}", "{id}", path), details)
        for path, methods in document["paths"].items()
        for method, details in methods.items()
        if isinstance(details, dict) and details.get("operationId") == operation_id
    ]
    assert len(found) == 1, f"{operation_id} is documented {len(found)} times"
    return found[0]


def schema_of(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in response:
        response = resolve(document, response["$ref"])
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    return []


# -- keyguard's own document -----------------------------------------------------------------


@pytest.mark.parametrize("operation_id", list(OPERATIONS))
def test_openapi_lists_the_operation_at_its_wavix_path(
    client: TestClient, operation_id: str
) -> None:
    method, path, _ = OPERATIONS[operation_id]

    assert operation(openapi(client), operation_id)[:2] == (method, path)


@pytest.mark.parametrize("operation_id", list(OPERATIONS))
def test_operation_documents_its_success_and_error_statuses(
    client: TestClient, operation_id: str
) -> None:
    _, _, details = operation(openapi(client), operation_id)

    assert {int(status) for status in details["responses"]} >= OPERATIONS[operation_id][2]


@pytest.mark.parametrize("operation_id", list(OPERATIONS))
def test_operation_documents_its_200_body(client: TestClient, operation_id: str) -> None:
    document = openapi(client)
    _, _, details = operation(document, operation_id)

    schema = schema_of(document, details["responses"]["200"])

    expected = SUCCESS_SCHEMAS[operation_id]
    assert {name: schema.get(name) for name in expected} == expected


@pytest.mark.parametrize("operation_id", list(OPERATIONS))
def test_operation_documents_only_wavix_error_bodies(client: TestClient, operation_id: str) -> None:
    document = openapi(client)
    _, _, details = operation(document, operation_id)

    for status, response in details["responses"].items():
        if int(status) < 400:
            continue
        schema = schema_of(document, response)
        component = resolve(document, schema["$ref"])
        assert set(component["properties"]) in ERROR_BODIES, f"{status}: {schema['$ref']}"
        assert set(component["required"]) == set(component["properties"]), status


@pytest.mark.parametrize(
    ("operation_id", "component", "required"),
    [
        pytest.param("api_keys_create", "ApiKeyCreateRequest", True, id="create"),
        pytest.param("api_keys_update", "ApiKeyUpdateRequest", False, id="update"),
    ],
)
def test_request_body_refers_to_a_component_schema_with_every_field(
    client: TestClient, operation_id: str, component: str, required: bool
) -> None:
    document = openapi(client)
    _, _, details = operation(document, operation_id)

    body = details["requestBody"]
    schema = schema_of(document, body)
    assert schema == {"$ref": f"#/components/schemas/{component}"}
    assert body["required"] is required
    properties = resolve(document, schema["$ref"])["properties"]
    expected = {
        "label", "permitted_ips", *FLAGS, *GROUPS, "expires_at", "ratelimit", "remaining", "refill"
    }  # fmt: skip
    assert set(properties) == expected


def test_create_body_requires_label_and_update_body_refuses_unknown_fields(
    client: TestClient,
) -> None:
    schemas = openapi(client)["components"]["schemas"]

    assert schemas["ApiKeyCreateRequest"]["required"] == ["label"]
    assert schemas["ApiKeyUpdateRequest"].get("required", []) == []
    assert schemas["ApiKeyUpdateRequest"]["additionalProperties"] is False


def test_every_reference_in_the_document_resolves(client: TestClient) -> None:
    document = openapi(client)

    for reference in references(document):
        assert resolve(document, reference), reference


def test_documented_api_key_schema_requires_both_generations_of_names(
    client: TestClient,
) -> None:
    schema = openapi(client)["components"]["schemas"]["ApiKey"]

    assert set(schema["required"]) >= {"id", "label", "value", *FLAGS, "permitted_ips"}
    assert list(schema["properties"]) == [
        "id",
        "label",
        "value",
        *FLAGS[:4],
        "permitted_ips",
        *FLAGS[4:],
        "last_used_at",
        *GROUPS,
        "created_at",
        "expires_at",
        "rolled_from",
        "leaked_at",
        "ratelimit",
        "remaining",
        "refill",
        "imported",
    ]


KEY_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"appid": []}]
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ADMIN_TOKEN = "operator-" + "1" * 32
METRICS_TOKEN = "prometheus-" + "2" * 32
VERIFY_TOKEN = "backend-" + "3" * 32


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, details)
        for path, item in document["paths"].items()
        for method, details in item.items()
        if method in HTTP_METHODS
    ]


def security_by_operation(document: dict[str, Any]) -> dict[str, object]:
    return {
        f"{method.upper()} {path}": details.get("security")
        for method, path, details in operations(document)
    }


def test_only_operations_that_ask_for_a_key_declare_one(client: TestClient) -> None:
    document = openapi(client)

    declared = security_by_operation(document)

    assert "security" not in document
    for label, security in declared.items():
        path = label.split(" ")[1]
        asks_for_a_key = path.startswith("/v1/") or path == "/auth/forward"
        assert security == (KEY_SECURITY if asks_for_a_key else None), label
    assert {"GET /healthz", "GET /metrics", "POST /auth/verify"} <= set(declared)
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "appid"}


class TestWithEveryToken:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            admin_token=SecretStr(ADMIN_TOKEN),
            metrics_token=SecretStr(METRICS_TOKEN),
            verify_token=SecretStr(VERIFY_TOKEN),
        )

    def test_each_token_is_declared_on_the_operations_that_ask_for_it(
        self, client: TestClient
    ) -> None:
        document = openapi(client)

        declared = security_by_operation(document)

        assert "security" not in document
        for label, security in declared.items():
            path = label.split(" ")[1]
            if path.startswith("/admin/"):
                assert security == [{"operatorToken": []}], label
            elif path.startswith("/v1/") or path == "/auth/forward":
                assert security == KEY_SECURITY, label
        assert declared["GET /metrics"] == [{"metricsToken": []}]
        assert declared["POST /auth/verify"] == [{"verifyToken": []}]
        assert declared["GET /healthz"] is None
        schemes = document["components"]["securitySchemes"]
        assert set(schemes) == {
            "bearerAuth", "appid", "operatorToken", "metricsToken", "verifyToken",
        }  # fmt: skip
        for name in ("operatorToken", "metricsToken", "verifyToken"):
            assert schemes[name]["type"] == "http"
            assert schemes[name]["scheme"] == "bearer"

    def test_every_operation_has_a_summary_and_a_description(self, client: TestClient) -> None:
        for method, path, details in operations(openapi(client)):
            assert details.get("summary"), f"{method} {path}"
            assert details.get("description"), f"{method} {path}"
            assert details["summary"] != details["description"], f"{method} {path}"

    def test_declared_security_is_what_the_operations_enforce(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        asked = {
            "/admin/v1/accounts": ADMIN_TOKEN,
            "/metrics": METRICS_TOKEN,
            "/v1/api-keys": tenant.token,
        }
        for path, token in asked.items():
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer(token)).status_code == 200, path
        assert client.get("/healthz").status_code == 200


def test_forward_auth_is_documented_for_every_method(client: TestClient) -> None:
    item = openapi(client)["paths"]["/auth/forward"]

    assert set(item) == HTTP_METHODS
    assert len({details["operationId"] for details in item.values()}) == len(HTTP_METHODS)
    for method in HTTP_METHODS:
        response = client.request(
            method.upper(), "/auth/forward", headers={"X-Original-URI": "/v1/numbers"}
        )
        assert response.status_code == 401, method
    for status, answer in item["head"]["responses"].items():
        assert "content" not in answer, status


def test_the_route_map_is_published_in_the_document(client: TestClient, keyguard: Keyguard) -> None:
    published = openapi(client)["x-keyguard-routes"]

    assert len(published) == len(keyguard.routes.routes) == 141  # Wavix's 136 and keyguard's
    assert {"method": "POST", "path": "/v1/cdrs", "scope": "calls", "level": "read"} in published
    assert {"method": "PUT", "path": "/v1/buy/cart", "scope": "numbers", "level": "write"} in (
        published
    )
    for route in ("/v1/api-keys/{id}", "/v1/audit-log"):
        assert {"method": "GET", "path": route, "scope": None, "level": None} in published
    assert {entry["scope"] for entry in published} == {None, *GROUPS}


class TestWithARouteMapFile:
    @pytest.fixture
    def settings(self, database_url: str, tmp_path: Path) -> Settings:
        routes = tmp_path / "shop.tsv"
        routes.write_text(
            "groups\torders\treports\n"
            "GET\t/v1/orders/{id}\torders\tread\n"
            "POST\t/v1/orders\torders\twrite\n"
            "DELETE\t/v1/admin\t-\t-\n"
        )
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            routes=routes,
            unknown_routes="deny",  # type: ignore[arg-type]
        )

    def test_the_published_routes_are_the_files_and_keyguards_own(self, client: TestClient) -> None:
        document = openapi(client)

        published = document["x-keyguard-routes"]

        assert published[:3] == [
            {"method": "GET", "path": "/v1/orders/{id}", "scope": "orders", "level": "read"},
            {"method": "POST", "path": "/v1/orders", "scope": "orders", "level": "write"},
            {"method": "DELETE", "path": "/v1/admin", "scope": None, "level": None},
        ]
        assert {(entry["path"], entry["scope"]) for entry in published[3:]} == {
            ("/v1/api-keys", None),
            ("/v1/api-keys/{id}", None),
            ("/v1/api-keys/{id}/activate", None),
            ("/v1/api-keys/{id}/deactivate", None),
            ("/v1/api-keys/{id}/roll", None),
            ("/v1/api-keys/{id}/usage", None),
            ("/v1/usage", None),
            ("/v1/audit-log", None),
        }
        assert "is refused for every key" in document["info"]["description"]


def test_docs_answer_200_html_without_a_key(client: TestClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


# -- real answers against Wavix's schemas ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("active", "active", id="current_name"),
        pytest.param("is_active", "is_active", id="seed_era_name"),
    ],
)
@pytest.mark.parametrize("generation", GENERATIONS)
def test_checker_refuses_a_key_without_a_field_its_generation_requires(
    client: TestClient, tenant: Tenant, generation: str, field: str, value: str
) -> None:
    key = {name: item for name, item in create_key(client, tenant).items() if name != value}
    required = field in wavix_document(generation)["components"]["schemas"]["ApiKey"]["required"]

    assert bool(wavix_violations(generation, "ApiKey", key)) is required


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("id", "1", id="id_as_string"),
        pytest.param("permitted_ips", [1], id="ip_as_number"),
        pytest.param("numbers", {"allow": "all"}, id="unknown_level"),
        pytest.param("calls", "read", id="group_as_string"),
        pytest.param("created_at", "yesterday", id="created_at_not_a_date"),
        pytest.param("last_used_at", 0, id="last_used_at_number"),
    ],
)
@pytest.mark.parametrize("generation", GENERATIONS)
def test_checker_refuses_a_key_with_a_wrong_value(
    client: TestClient, tenant: Tenant, generation: str, field: str, value: object
) -> None:
    key = {**create_key(client, tenant), field: value}

    assert wavix_violations(generation, "ApiKey", key) != []


KEY_SHAPES = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {
            "active": False,
            "restricted": True,
            "permitted_ips": ["192.0.2.1", "10.0.0.0/8", "2001:db8::/32"],
            "scopes_enabled": True,
            **{
                group: {"allow": ("read", "write")[index % 2]} for index, group in enumerate(GROUPS)
            },
        },
        id="every_field_set",
    ),
]


@pytest.mark.parametrize("fields", KEY_SHAPES)
@pytest.mark.parametrize("generation", GENERATIONS)
def test_created_key_fits_wavix_api_key_schema(
    client: TestClient, tenant: Tenant, generation: str, fields: dict[str, Any]
) -> None:
    key = create_key(client, tenant, **fields)

    assert wavix_violations(generation, "ApiKey", key) == []


@pytest.mark.parametrize("generation", GENERATIONS)
def test_listed_keys_fit_wavix_api_key_schema(
    client: TestClient, tenant: Tenant, generation: str
) -> None:
    used = create_key(client, tenant, label="used")
    assert client.get(KEYS, headers=bearer(used["value"])).status_code == 200
    create_key(client, tenant, label="scoped", scopes_enabled=True, calls={"allow": "read"})

    response = client.get(KEYS, headers=tenant.headers)

    assert response.status_code == 200
    assert len(response.json()) == 3
    schema = {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}
    assert violations(response.json(), schema, wavix_document(generation)) == []


@pytest.mark.parametrize("generation", GENERATIONS)
def test_fetched_and_updated_keys_fit_wavix_api_key_schema(
    client: TestClient, tenant: Tenant, generation: str
) -> None:
    key = create_key(client, tenant)

    fetched = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers)
    updated = client.patch(f"{KEYS}/{key['id']}", json={"label": "x"}, headers=tenant.headers)

    assert wavix_violations(generation, "ApiKey", fetched.json()) == []
    assert wavix_violations(generation, "ApiKey", updated.json()) == []


@pytest.mark.parametrize(
    ("request_args", "status", "schema_name"),
    [
        pytest.param(("DELETE", "/{id}", None), 200, "SuccessResponse", id="deleted"),
        pytest.param(("GET", "/987654321", None), 404, "NotFoundErrorResponse", id="not_found"),
        pytest.param(("POST", "", {}), 400, "ValidationErrorResponse", id="bad_request"),
        pytest.param(
            ("POST", "", {"label": "x", "numbers": "read"}),
            422,
            "ValidationErrorResponse",
            id="validation_error",
        ),
    ],
)
def test_other_answers_fit_wavix_schemas(
    client: TestClient,
    tenant: Tenant,
    request_args: tuple[str, str, object],
    status: int,
    schema_name: str,
) -> None:
    method, path, body = request_args
    key = create_key(client, tenant)

    url = KEYS + path.format(id=key["id"])
    response = client.request(method, url, json=body, headers=tenant.headers)

    assert response.status_code == status
    assert_fits_exactly(response.json(), "current", schema_name)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_unauthorized_answer_fits_wavix_schema(client: TestClient, generation: str) -> None:
    response = client.get(KEYS)

    assert response.status_code == 401
    assert_fits_exactly(response.json(), generation, "UnauthorizedErrorResponse")
