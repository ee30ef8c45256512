"""Stripe's OpenAPI spec as the emulator's rulebook: every request's parameters are checked by it.

The data is `spec/stripe-openapi.json.gz`: Stripe's published `spec3.json` for API version
2024-04-10 (github.com/stripe/openapi), trimmed to the endpoints served here and bridged to the
API version stripe-python 16 pins (2026-10-28.endive) from the SDK's generated classes; see
`scripts/build_stripe_spec.py`, which wrote it. It is loaded once, and each endpoint's parameter
schema is compiled once into a checker, so a request pays a walk over its own parameters only.

Refusals read as Stripe's do: 400 `invalid_request_error` with `code` `parameter_unknown`,
`parameter_missing`, `parameter_invalid_integer` or `parameter_invalid_empty`, `param` in
Stripe's bracket notation (`recurring[x]`, `line_items[0][x]`).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from .wire import StripeError

Schema = dict[str, Any]
Check = Callable[[Any, str], None]
SPEC_FILE = "stripe-openapi.json.gz"
_INTEGER = re.compile(r"^-?\d+$")


@functools.cache
def load() -> dict[str, Any]:
    """The bridged spec: `operations` (method, path, params, response) and `components`."""
    data = resources.files(__package__).joinpath("spec", SPEC_FILE).read_bytes()
    spec: dict[str, Any] = json.loads(gzip.decompress(data))
    return spec


def unknown(name: str) -> StripeError:
    return StripeError(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def _missing(name: str) -> StripeError:
    return StripeError(f"Missing required param: {name}.", code="parameter_missing", param=name)


def _empty(name: str) -> StripeError:
    return StripeError(
        f"You passed an empty string for '{name}'. We assume empty values are an attempt to "
        f"unset a parameter; however '{name}' cannot be unset. You should remove '{name}' "
        "from your request or supply a non-empty value.",
        code="parameter_invalid_empty",
        param=name,
    )


def _invalid(kind: str, value: Any, name: str) -> StripeError:
    return StripeError(f"Invalid {kind}: {_show(value)}", param=name)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)[:200]


class Compiler:
    """Turns a parameter schema into a checker; `form` values arrive as strings."""

    def __init__(self, components: dict[str, Schema], *, form: bool) -> None:
        self.components = components
        self.form = form

    def deref(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def compile(self, schema: Schema) -> Check:
        schema = self.deref(schema)
        if "anyOf" in schema:
            return self._any_of([self.compile(s) for s in schema["anyOf"]], schema["anyOf"])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            return self._array(self.compile(schema.get("items", {})))
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer
        if kind == "number":
            return self._number
        if kind == "boolean":
            return self._boolean
        return lambda value, name: None

    def _object(self, schema: Schema) -> Check:
        props = {k: self.compile(v) for k, v in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        extra = schema.get("additionalProperties")
        open_ended = "properties" not in schema and extra is None
        extra_check = self.compile(extra) if isinstance(extra, dict) else None

        def check(value: Any, name: str) -> None:
            if value == "" and self.form:
                raise _empty(name)
            if not isinstance(value, dict):
                raise _invalid("object", value, name)
            for key, item in value.items():
                child = f"{name}[{key}]" if name else key
                checker = props.get(key, extra_check)
                if checker is not None:
                    checker(item, child)
                elif not open_ended:
                    raise unknown(child)
            for key in required:
                if key not in value:
                    raise _missing(f"{name}[{key}]" if name else key)

        return check

    def _array(self, items: Check) -> Check:
        def check(value: Any, name: str) -> None:
            if value == "" and self.form:
                raise _empty(name)
            if isinstance(value, dict) and self.form:  # sparse indices (`a[3]=x` alone)
                value = list(value.values())
            if not isinstance(value, list):
                raise _invalid("array", value, name)
            for index, item in enumerate(value):
                items(item, f"{name}[{index}]")

        return check

    def _string(self, schema: Schema) -> Check:
        enum = tuple(schema.get("enum", ()))
        decimal = schema.get("format") == "decimal"

        def check(value: Any, name: str) -> None:
            if not isinstance(value, str):
                raise _invalid("string", value, name)
            if enum and value not in enum:
                if value == "":
                    raise _empty(name)
                choices = ", ".join(str(e) for e in enum)
                raise StripeError(f"Invalid {name}: must be one of {choices}", param=name)
            if decimal:
                try:
                    ok = Decimal(value).is_finite()
                except InvalidOperation:
                    ok = False
                if not ok:
                    raise _invalid("decimal", value, name)

        return check

    def _integer(self, value: Any, name: str) -> None:
        if self.form and isinstance(value, str) and _INTEGER.match(value):
            return
        if not self.form and isinstance(value, int) and not isinstance(value, bool):
            return
        if value == "":
            raise _empty(name)
        raise StripeError(
            f"Invalid integer: {_show(value)}", code="parameter_invalid_integer", param=name
        )

    def _number(self, value: Any, name: str) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        try:
            Decimal(value if isinstance(value, str) else "x")
        except InvalidOperation:
            raise (_empty(name) if value == "" else _invalid("number", value, name)) from None

    def _boolean(self, value: Any, name: str) -> None:
        if isinstance(value, bool) or value in ("true", "false"):
            return
        raise _empty(name) if value == "" else _invalid("boolean", value, name)

    def _any_of(self, checks: list[Check], schemas: list[Schema]) -> Check:
        kinds = [self.deref(s).get("type") for s in schemas]

        def check(value: Any, name: str) -> None:
            errors: list[StripeError] = []
            for one in checks:
                try:
                    one(value, name)
                    return
                except StripeError as exc:
                    errors.append(exc)
            # Explain with the branch of the value's own shape: an object's unknown key, etc.
            shape = (
                "object" if isinstance(value, dict) else "array" if isinstance(value, list) else ""
            )
            for kind, error in zip(kinds, errors, strict=True):
                if kind == shape:
                    raise error
            scalar = [e for e in errors if e.code != "parameter_invalid_empty"]
            raise (scalar or errors)[0]

        return check


@dataclass(frozen=True)
class Operation:
    """One endpoint: its route, its compiled parameter check and its response schema."""

    method: str
    path: str
    pattern: re.Pattern[str]
    check: Check
    response: Schema

    def validate(self, params: dict[str, Any]) -> None:
        self.check(params, "")


@functools.cache
def operations() -> tuple[Operation, ...]:
    spec = load()
    components = spec["components"]["schemas"]
    compiled = []
    for op in spec["operations"]:
        form = op["path"].startswith("/v1/")
        regex = re.sub(r"\{(\w+)\}", r"[^/]+", op["path"])
        compiled.append(
            Operation(
                method=op["method"],
                path=op["path"],
                pattern=re.compile(f"^{regex}$"),
                check=Compiler(components, form=form).compile(op["params"]),
                response=op["response"],
            )
        )
    return tuple(compiled)


def operation(method: str, path: str) -> Operation | None:
    """The spec's operation for a served route template such as `/v1/customers/{id}`."""
    for op in operations():
        if op.method == method and op.path == path:
            return op
    return None
