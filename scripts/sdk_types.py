"""Read stripe-python's generated classes as JSON Schema (used only to build the shipped spec).

The SDK's `params` TypedDicts are generated from Stripe's spec at the API version it pins, so they
say which request parameters that version accepts; its resource classes say which response fields
exist (`Optional[...]` may be null or absent, anything else is always present).
"""

from __future__ import annotations

import sys
import types
import typing
from decimal import Decimal
from typing import Any, ForwardRef, NotRequired, Required

import stripe
from stripe._request_options import RequestOptions
from stripe._stripe_object import StripeObject
from typing_extensions import is_typeddict

Schema = dict[str, Any]
_SKIP_OPTIONS = frozenset(RequestOptions.__annotations__)


class _Lenient(dict[str, Any]):
    """Evaluation namespace in which an unknown name is `Any` (names only imported for typing)."""

    def __missing__(self, key: str) -> Any:
        return getattr(stripe, key, Any)


def resolve(annotation: Any, owner: type) -> Any:
    """An annotation (string or ForwardRef, possibly nested) as a typing object."""
    if isinstance(annotation, ForwardRef):
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):
        module = sys.modules[owner.__module__]
        scope = _Lenient(vars(module))
        scope.update({k: v for k, v in vars(owner).items() if isinstance(v, type)})
        scope.update(vars(typing))
        return eval(annotation, {"__builtins__": __builtins__}, scope)  # noqa: S307
    return annotation


def fields(cls: type) -> dict[str, Any]:
    """Own and inherited annotations of a TypedDict or StripeObject subclass, resolved."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if name in _SKIP_OPTIONS or name.isupper() or name.startswith("_"):
                continue
            value = resolve(annotation, klass)
            if typing.get_origin(value) is typing.ClassVar:
                continue
            found[name] = (value, klass)
    return {name: _deep(value, klass) for name, (value, klass) in found.items()}


def _deep(value: Any, owner: type) -> Any:
    args = typing.get_args(value)
    if not args:
        return resolve(value, owner)
    origin = typing.get_origin(value)
    if origin is typing.Literal:
        return value
    resolved = tuple(_deep(resolve(a, owner), owner) for a in args)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[resolved]  # noqa: UP007
    try:
        return value.copy_with(resolved)
    except (AttributeError, TypeError):
        return value


def unwrap(t: Any) -> tuple[Any, bool]:
    """Strip Required/NotRequired; report whether None is allowed."""
    while typing.get_origin(t) in (NotRequired, Required):
        t = typing.get_args(t)[0]
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return t, False


def schema_of(t: Any) -> Schema:
    """JSON Schema for a request parameter's type (strict enums, typed scalars)."""
    t, _ = unwrap(t)
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        others = [a for a in args if a is not str and typing.get_origin(a) is not typing.Literal]
        others = [a for a in others if getattr(a, "__name__", "") != "UntypedStripeObject"]
        options = [schema_of(a) for a in literals if typing.get_args(a) != ("",)]
        options += [schema_of(a) for a in others]
        if str in args and not literals:
            options.append({"type": "string"})
        if any(typing.get_args(a) == ("",) for a in literals):
            options.append({"type": "string", "enum": [""]})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is typing.Literal:
        return {"type": "string", "enum": list(args)}
    if origin in (list, typing.List):  # noqa: UP006
        return {"type": "array", "items": schema_of(args[0])}
    if origin in (dict, typing.Dict):  # noqa: UP006
        return {"type": "object", "additionalProperties": schema_of(args[1])}
    if is_typeddict(t):
        hints = fields(t)
        return {
            "type": "object",
            "properties": {k: schema_of(v) for k, v in hints.items()},
            "required": sorted(k for k in getattr(t, "__required_keys__", ()) if k in hints),
        }
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if t in simple:
        return {"type": simple[t]}
    if t is Decimal:
        return {"type": "string", "format": "decimal"}
    return {}


def object_class(t: Any) -> type | None:
    """The StripeObject subclass a response field holds (through Optional, List, expandable)."""
    t, _ = unwrap(t)
    if isinstance(t, type) and issubclass(t, StripeObject):
        return t
    for arg in typing.get_args(t):
        found = object_class(arg)
        if found is not None:
            return found
    return None


def response_fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """Response field → (type, nullable-or-absent)."""
    return {name: unwrap(t) for name, t in fields(cls).items()}


def enum_of(t: Any) -> list[str]:
    """The literal values a response field may take, per the SDK (empty if not an enum)."""
    t, _ = unwrap(t)
    if typing.get_origin(t) is typing.Literal:
        return [str(a) for a in typing.get_args(t)]
    values: list[str] = []
    for arg in (
        typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else ()
    ):
        if typing.get_origin(arg) is typing.Literal:
            values += [str(a) for a in typing.get_args(arg)]
    return values
