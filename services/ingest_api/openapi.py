"""The OpenAPI description of the ingest routes: each pipeline's model as the request body's
schema, and the answers of the request contract (`ingest_api.service`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def model_schemas(models: dict[str, type[BaseModel]]
                  ) -> tuple[dict[str, str], dict[str, Any]]:
    """Component schemas of the pipelines' models: ({pipeline: component name}, components)."""
    components: dict[str, Any] = {}
    names: dict[str, str] = {}
    for pipeline, model in models.items():
        for prefix in ("", f"{pipeline}__"):
            schema = model.model_json_schema(
                ref_template=f"#/components/schemas/{prefix}{{model}}")
            defs = {f"{prefix}{k}": v for k, v in schema.pop("$defs", {}).items()}
            defs[f"{prefix}{model.__name__}"] = schema
            if all(components.get(k, v) == v for k, v in defs.items()):
                components.update(defs)
                names[pipeline] = f"{prefix}{model.__name__}"
                break
    return names, components


def request_body(component: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{component}"}
    return {
        "required": True,
        "description": "One record (a JSON object), an array of records, or NDJSON "
                       "(one record per line, Content-Type application/x-ndjson).",
        "content": {
            "application/json": {"schema": {"oneOf": [ref, {"type": "array", "items": ref}]}},
            "application/x-ndjson": {"schema": ref},
        },
    }


_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every record acknowledged by Kafka",
          "content": {"application/json": {"schema": {
              "type": "object", "properties": {"accepted": {"type": "integer"}}}}}},
    400: {"description": "Malformed JSON (with line, column, position) or empty body", **_ERROR},
    401: {"description": "Missing or invalid API key", **_ERROR},
    408: {"description": "Body arrived too slowly", **_ERROR},
    413: {"description": "Body (as sent or decompressed) or record too large", **_ERROR},
    415: {"description": "Content-Encoding other than gzip, zstd or identity", **_ERROR},
    422: {"description": "Schema violations: errors[] of {index, path, message}", **_ERROR},
    429: {"description": "The API key's rate limit is used up; see Retry-After", **_ERROR},
    503: {"description": "Kafka unavailable or overloaded, or the table lacks a column of "
                         "the model; see Retry-After", **_ERROR},
}

