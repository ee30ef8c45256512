"""Stripe's wire format: bracket-keyed form bodies, typed parameters, error bodies."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from .state import JSON

_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


class StripeError(Exception):
    """An error answered in Stripe's shape. Raised by handlers, rendered by the dispatcher."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str) -> JSON:
        error: JSON = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    """Stripe's "No such customer: 'cus_x'": 404 for an id in the path, 400 for one in a param."""
    return StripeError(
        f"No such {kind}: '{object_id}'",
        status=404 if param == "id" else 400,
        code="resource_missing",
        param=param,
    )


def decode_pairs(pairs: list[tuple[str, str]]) -> JSON:
    """Rebuild nested params from `a[b][0][c]=v` pairs; all-digit keys become lists."""
    root: JSON = {}
    for raw_key, value in pairs:
        head, _, rest = raw_key.partition("[")
        parts = [head, *_KEY_PART.findall("[" + rest)] if rest else [head]
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `a[]=x`: append
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise StripeError(f"Invalid parameter: {raw_key}", param=raw_key)
    result = _listify(root)
    # A top level of only digit keys (`0=a`) would come back as a list; keep it a mapping.
    return result if isinstance(result, dict) else {str(i): v for i, v in enumerate(result)}


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def decode_form(body: bytes) -> JSON:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StripeError("The request body is not valid UTF-8.") from exc
    return decode_pairs(parse_qsl(text, keep_blank_values=True))


def decode_json(body: bytes) -> JSON:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise StripeError("Invalid JSON received.") from exc
    if not isinstance(data, dict):
        raise StripeError("The request body must be a JSON object.")
    return data


# Typed readers for form values, which always arrive as strings.


def opt_str(params: JSON, name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise StripeError(f"Invalid string: {name}", param=name)
    return value


def req_str(params: JSON, name: str) -> str:
    value = opt_str(params, name)
    if value is None:
        raise StripeError(f"Missing required param: {name}.", code="parameter_missing", param=name)
    return value


def opt_int(params: JSON, name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise StripeError(f"Invalid integer: {value}", code="parameter_invalid_integer", param=name)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise StripeError(
            f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        ) from exc


def req_int(params: JSON, name: str) -> int:
    value = opt_int(params, name)
    if value is None:
        raise StripeError(f"Missing required param: {name}.", code="parameter_missing", param=name)
    return value


def opt_bool(params: JSON, name: str) -> bool | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise StripeError(f"Invalid boolean: {value}", param=name)


def opt_decimal(params: JSON, name: str) -> Decimal | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise StripeError(f"Invalid decimal: {value}", param=name) from exc
    if not number.is_finite():
        raise StripeError(f"Invalid decimal: {value}", param=name)
    return number


def opt_dict(params: JSON, name: str) -> JSON:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise StripeError(f"Invalid object: {name}", param=name)
    return value


def opt_list(params: JSON, name: str) -> list[Any]:
    value = params.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, dict):  # sparse indices such as `a[3]=x` alone
        return list(value.values())
    if not isinstance(value, list):
        return [value]
    return value


def merge_metadata(current: JSON, update: JSON) -> JSON:
    """Stripe merges metadata keys; an empty string removes a key."""
    merged = dict(current)
    for key, value in update.items():
        if value == "" or value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged
