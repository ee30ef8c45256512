"""Validate emulator output against the bundled Stripe spec (OpenAPI 3.0 → JSON Schema 2020-12)."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema_rs

from meterapi.stripe_emulator import openapi

# `data.object` of an event, by its `object` field, to the spec's schema for it.
OBJECT_SCHEMAS = {
    "customer": "customer",
    "product": "product",
    "price": "price",
    "subscription": "subscription",
    "invoice": "invoice",
    "checkout.session": "checkout.session",
}


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema's null alternative."""
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    converted = {k: to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def _components() -> dict[str, Any]:
    return {"schemas": to_json_schema(openapi.load()["components"]["schemas"])}


@functools.cache
def _validator(key: str) -> jsonschema_rs.Draft202012Validator:
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{key}"}
    if key.startswith("op:"):
        method, path = key[3:].split(" ", 1)
        op = openapi.operation(method, path)
        assert op is not None
        schema = to_json_schema(op.response)
    return jsonschema_rs.Draft202012Validator({**schema, "components": _components()})


def problems(key: str, body: Any) -> list[str]:
    """Empty when `body` fits the schema (`op:METHOD /route` or a component name)."""
    return [
        f"{'/'.join(map(str, e.instance_path))}: {e.message}"[:300]
        for e in _validator(key).iter_errors(body)
    ]


def event_problems(event: dict[str, Any]) -> list[str]:
    found = problems("event", event)
    obj = event["data"]["object"]
    name = OBJECT_SCHEMAS.get(obj.get("object"))
    assert name is not None, f"no schema for {obj.get('object')}"
    return found + [f"data.object: {p}" for p in problems(name, obj)]
