"""The OpenAPI 3.1 document of every public route of `infero server`.

Schemas of infero's own documents come from the pydantic models in `infero.protocol`, so
the document cannot drift from the wire format; OpenAI routes are relayed untouched and
documented by shape only. tests/infero/server/test_openapi.py checks the paths and methods
here against the routes `create_app` really mounts.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from infero.common.buildinfo import BUILD
from infero.protocol.errors import ErrorBody
from infero.protocol.state import StateSnapshot

Json = dict[str, Any]

SWAGGER_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "api-docs.js")
"""Files served under `/api/client/` for the Swagger UI page."""

_PUBLIC: list[dict[str, list[str]]] = []
"""`security` of an operation that needs no credential."""


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Json:
    return _json(_ref("ErrorBody"), description)


_ERRORS_V1 = {
    "400": _error("Invalid request (bad JSON, missing `model`, wrong content type)."),
    "401": _error("Missing or invalid API key."),
    "404": _error("No connector serves this model (`model_not_found`)."),
    "408": _error("The body stopped arriving for BODY_TIMEOUT (`request_timeout`)."),
    "413": _error("Body larger than MAX_BODY_BYTES."),
    "429": _error("The model's queue is full (`Retry-After`)."),
    "502": _error("The connector or its backend failed before answering."),
    "503": _error(
        "Queue wait timed out, the server is draining, or MAX_HELD_BODY_BYTES is reached "
        "(`Retry-After`)."
    ),
    "504": _error("No first byte from the connector within FIRST_BYTE_TIMEOUT."),
}

_PART = "(summary|workers|models|mcp)"

_STATE_SCOPE: list[Json] = [
    {
        "name": "parts",
        "in": "query",
        "schema": {"type": "string", "pattern": f"^{_PART}(,{_PART})*$"},
        "description": "Comma list of summary, workers, models, mcp (default all; the summary "
        "always comes).",
    },
    {
        "name": "connector",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Only this connector's row.",
    },
    {
        "name": "gone",
        "in": "query",
        "schema": {"type": "string", "enum": ["count", "list"]},
        "description": "Departed connectors only counted (default) or listed.",
    },
]

_OPENAI_BODY: Json = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "Routed to a connector serving it.",
        },
        "stream": {"type": "boolean", "description": "Answer as server-sent events."},
    },
    "additionalProperties": True,
}

_ANSWER: Json = {
    "description": "The backend's answer.",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}

_WORKER_HEADER: Json = {
    "name": "X-Infero-Worker",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Send the request to this connector id only.",
}


def _relayed(summary: str, openai_name: str) -> Json:
    return {
        "post": {
            "tags": ["OpenAI"],
            "summary": summary,
            "description": (
                f"OpenAI-compatible {openai_name}: the body is relayed untouched to a connector "
                "serving `model` (least busy first, queued when all are busy) and the answer "
                "streams back untouched, as JSON or as server-sent events when `stream` is true."
            ),
            "parameters": [_WORKER_HEADER],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _OPENAI_BODY}},
            },
            "responses": {
                "200": _ANSWER,
                **_ERRORS_V1,
            },
        }
    }


def _stored(summary: str) -> Json:
    return {
        "tags": ["OpenAI"],
        "summary": summary,
        "description": (
            "Responses API: relayed untouched to the connector that created the response "
            "(learned from its `POST /api/v1/responses` answer; see docs/routing.md), queued "
            "while it is busy. Query parameters pass through (`stream=true` answers as "
            "server-sent events)."
        ),
        "parameters": [
            {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": _ANSWER,
            "401": _ERRORS_V1["401"],
            "404": _error(
                "Unknown response id (`response_not_found`), or its connector is gone "
                "(`response_connector_gone`)."
            ),
            **{code: _ERRORS_V1[code] for code in ("502", "503", "504")},
        },
    }


def _link(summary: str, kind: str) -> Json:
    return {
        "get": {
            "tags": ["Connectors"],
            "summary": summary,
            "description": (
                f"WebSocket upgrade for `infero {kind}` connectors. The first frame is a `hello` "
                "carrying CLIENT_KEY (see docs/protocol.md); no API key is used here."
            ),
            "security": _PUBLIC,
            "responses": {
                "101": {"description": "Switching to the link protocol."},
                "400": {"description": "Not a WebSocket upgrade request (plain text)."},
                "503": {"description": "The server is draining."},
            },
        }
    }


_MODEL: Json = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string", "description": "Names of the connectors serving it."},
    },
}

_PROBE: Json = {
    "type": "object",
    "properties": {"status": {"enum": ["ok", "ready", "not_ready", "draining"]}},
}


def _control(what: str, noun: str) -> Json:
    actions = ["drain", "undrain", "shutdown"]
    return {
        "post": {
            "tags": ["Operations"],
            "summary": f"Drain, undrain or shut down {what}",
            "description": (
                f"Relayed to the {noun} over its link and logged with the name of the "
                "key that asked. Needs a key with the operator role (OPERATOR_KEY, or "
                "`operator` in API_KEYS_FILE)."
            ),
            "security": [{"OperatorKey": []}],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "action",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": actions},
                },
            ],
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "action": {"enum": actions},
                            "accepted": {"const": True},
                        },
                    },
                    f"Sent to the {noun}.",
                ),
                "401": _ERRORS_V1["401"],
                "403": _error("The key lacks the operator role, or none is configured."),
                "404": _error(f"No connected {noun} with this id."),
            },
        }
    }


def _mcp_call(method: str, summary: str) -> Json:
    return {
        "tags": ["MCP"],
        "summary": summary,
        "description": (
            "Streamable HTTP MCP endpoint of the relay `{id}`, relayed untouched "
            "(see docs/mcp.md). Takes a valid API key, or the relay's own AUTH_TOKEN."
        ),
        "security": [{"ApiKey": []}, {"McpToken": []}],
        "parameters": [
            {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "JSON-RPC answer(s), as JSON or server-sent events.",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "202": {"description": "Notification or response accepted."},
            "401": {"description": "No valid credential (JSON-RPC error)."},
            "503": {"description": "No relay with this id is connected (JSON-RPC error)."},
        },
    } | ({"requestBody": _json_rpc_body()} if method == "post" else {})


def _resource_metadata(*, relay: bool) -> Json:
    """RFC 9728 metadata MCP clients read after a 401 (bearer tokens are API keys)."""
    parameters = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "tags": ["MCP"],
        "summary": "Protected resource metadata"
        + (" of an MCP relay" if relay else " of the server"),
        "description": (
            "No authorization server: the bearer token is an API key issued by the operator "
            "(or the relay's AUTH_TOKEN). See docs/mcp.md, Access."
        ),
        "security": _PUBLIC,
        "responses": {"200": _json({"type": "object"}, "RFC 9728 metadata.")},
    } | ({"parameters": parameters} if relay else {})


def _json_rpc_body() -> Json:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": ["object", "array"]}}},
    }


def _paths(metrics_on_main_port: bool) -> Json:
    paths: Json = {
        "/healthz": {
            "get": {
                "tags": ["Operations"],
                "summary": "Liveness: 200 while the process runs",
                "security": _PUBLIC,
                "responses": {"200": _json(_PROBE, "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["Operations"],
                "summary": "Readiness: 503 while draining or with no ready connector",
                "security": _PUBLIC,
                "responses": {
                    "200": _json(_PROBE, "Ready to serve."),
                    "503": _json(_PROBE, "Draining, or nothing to serve."),
                },
            }
        },
        "/api/v1/chat/completions": _relayed("Chat completion", "chat completions"),
        "/api/v1/completions": _relayed("Text completion", "completions"),
        "/api/v1/embeddings": _relayed("Embeddings", "embeddings"),
        "/api/v1/responses": _relayed("Response (Responses API)", "responses"),
        "/api/v1/responses/{response_id}": {
            "get": _stored("Retrieve a stored response"),
            "delete": _stored("Delete a stored response"),
        },
        "/api/v1/responses/{response_id}/cancel": {
            "post": _stored("Cancel a background response"),
        },
        "/api/v1/responses/{response_id}/input_items": {
            "get": _stored("Input items of a stored response"),
        },
        "/api/v1/models": {
            "get": {
                "tags": ["OpenAI"],
                "summary": "Models served by connected connectors",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "object": {"const": "list"},
                                "data": {"type": "array", "items": _ref("Model")},
                            },
                        },
                        "The models.",
                    ),
                    "401": _ERRORS_V1["401"],
                },
            }
        },
        "/api/v1/models/{id}": {
            "get": {
                "tags": ["OpenAI"],
                "summary": "One model (ids may contain `/` and `:`)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _json(_ref("Model"), "The model."),
                    "401": _ERRORS_V1["401"],
                    "404": _ERRORS_V1["404"],
                },
            }
        },
        "/api/state": {
            "get": {
                "tags": ["Operations"],
                "summary": "Snapshot of the server, connectors, models and MCP relays",
                "parameters": _STATE_SCOPE,
                "responses": {
                    "200": _json(_ref("StateSnapshot"), "The snapshot (see docs/state.md)."),
                    "400": _error("Unknown `parts`, `gone` or `mode` value."),
                    "401": _ERRORS_V1["401"],
                },
            }
        },
        "/api/state/stream": {
            "get": {
                "tags": ["Operations"],
                "summary": "The snapshot, then deltas, as server-sent events",
                "description": (
                    "`event: snapshot` (a StateSnapshot) at once, then `event: delta` with only "
                    "what changed (keyed by id, at most two a second), each with an `id:` to "
                    "resume from with `Last-Event-ID`; keepalive comments. `mode=full` sends "
                    "whole documents as plain events instead. See docs/state.md."
                ),
                "parameters": [
                    *_STATE_SCOPE,
                    {
                        "name": "mode",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["delta", "full"]},
                        "description": "`delta` (default) or `full` documents on every change.",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "Resume after this event (else a full snapshot first).",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _error("Unknown `parts`, `gone` or `mode` value."),
                    "401": _ERRORS_V1["401"],
                },
            }
        },
        "/api/workers/{id}/{action}": _control("an LLM connector", "connector"),
        "/api/mcp/relays/{id}/{action}": _control("an MCP relay", "relay"),
        "/api/workers/connect": _link("LLM connector link (seed path)", "llm"),
        "/api/llm/connect": _link("LLM connector link", "llm"),
        "/api/mcp/connect": _link("MCP relay link", "mcp"),
        "/api/mcp/id/{id}": {
            "post": _mcp_call("post", "Send a JSON-RPC message to an MCP relay"),
            "get": _mcp_call("get", "Open the MCP listening stream of a session"),
            "delete": _mcp_call("delete", "End an MCP session"),
        },
        "/.well-known/oauth-protected-resource": {"get": _resource_metadata(relay=False)},
        "/.well-known/oauth-protected-resource/api/mcp/id/{id}": {
            "get": _resource_metadata(relay=True)
        },
        "/state": {
            "get": {
                "tags": ["Operations"],
                "summary": "Web dashboard (the page is public; its data needs the API key)",
                "security": _PUBLIC,
                "responses": {
                    "200": {"description": "HTML page.", "content": {"text/html": {}}},
                },
            }
        },
        "/api/client/": {
            "get": {
                "tags": ["Documentation"],
                "summary": "This documentation (Swagger UI, served offline)",
                "security": _PUBLIC,
                "responses": {
                    "200": {"description": "HTML page.", "content": {"text/html": {}}},
                },
            }
        },
        "/api/client/openapi.json": {
            "get": {
                "tags": ["Documentation"],
                "summary": "This OpenAPI document",
                "security": _PUBLIC,
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
            }
        },
        "/api/client/{asset}": {
            "get": {
                "tags": ["Documentation"],
                "summary": "Static files of the Swagger UI page",
                "security": _PUBLIC,
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": list(SWAGGER_ASSETS)},
                    }
                ],
                "responses": {
                    "200": {"description": "The file."},
                    "404": {"description": "No such file."},
                },
            }
        },
    }
    if metrics_on_main_port:
        paths["/metrics"] = {
            "get": {
                "tags": ["Operations"],
                "summary": "Prometheus metrics (here unless METRICS_PORT moves them)",
                "security": _PUBLIC,
                "responses": {
                    "200": {
                        "description": "Prometheus text format (see docs/metrics.md).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    return paths


def _schemas() -> Json:
    _, top = models_json_schema(
        [(StateSnapshot, "serialization"), (ErrorBody, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    schemas: Json = dict(top.get("$defs", {}))
    schemas["Model"] = _MODEL
    return schemas


def build_document(*, metrics_on_main_port: bool) -> Json:
    """The whole document; `/metrics` is listed only when the main port serves it."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "infero",
            "version": BUILD.version,
            "summary": "One OpenAI-compatible API for private LLM runtimes and MCP servers.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "OpenAI", "description": "OpenAI-compatible API, relayed to connectors."},
            {"name": "MCP", "description": "MCP servers exposed by `infero mcp` relays."},
            {"name": "Operations", "description": "Health, state, dashboard, fleet control."},
            {"name": "Connectors", "description": "WebSocket links of `infero llm` and `mcp`."},
            {"name": "Documentation", "description": "This page and document."},
        ],
        "security": [{"ApiKey": []}],
        "paths": _paths(metrics_on_main_port),
        "components": {
            "securitySchemes": {
                "ApiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client key: API_KEY, or one from API_KEYS_FILE.",
                },
                "OperatorKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A key with the operator role (OPERATOR_KEY or API_KEYS_FILE).",
                },
                "McpToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The AUTH_TOKEN an `infero mcp` relay was started with.",
                },
            },
            "schemas": _schemas(),
        },
    }
