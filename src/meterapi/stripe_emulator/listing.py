"""List envelopes with Stripe's cursor pagination, and `expand[]`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .state import JSON, Store, public
from .wire import StripeError, opt_int, opt_list, opt_str


def paginate(items: Iterable[JSON], params: JSON, url: str) -> JSON:
    """Newest first, `limit` (1 to 100, default 10), `starting_after` / `ending_before` by id."""
    ordered = list(items)
    limit = opt_int(params, "limit") or 10
    if not 1 <= limit <= 100:
        raise StripeError("Invalid limit: must be between 1 and 100", param="limit")
    after, before = opt_str(params, "starting_after"), opt_str(params, "ending_before")
    ids = [item.get("id") for item in ordered]
    if after is not None:
        if after not in ids:
            raise StripeError(f"No such object: '{after}'", param="starting_after")
        ordered = ordered[ids.index(after) + 1 :]
    elif before is not None:
        if before not in ids:
            raise StripeError(f"No such object: '{before}'", param="ending_before")
        ordered = ordered[: ids.index(before)][-limit:]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": [public(item) for item in page],
        "has_more": len(ordered) > limit,
        "url": url,
    }


def newest_first(table: dict[str, JSON]) -> list[JSON]:
    # Insertion order is creation order; `created` has one-second resolution so it can't sort.
    return list(reversed(table.values()))


def expand(store: Store, obj: JSON, params: JSON) -> JSON:
    """Replace id strings with the objects they name, for each dotted path in `expand[]`."""
    result = public(obj)
    for path in opt_list(params, "expand"):
        _expand_path(store, result, str(path).split("."))
    return result


def _expand_path(store: Store, node: Any, parts: list[str]) -> None:
    if not parts or not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    value = node.get(head)
    if isinstance(value, str) and not rest:
        found = store.find(value)
        if found is not None:
            node[head] = public(found)
        return
    if isinstance(value, str):
        found = store.find(value)
        if found is not None:
            node[head] = value = public(found)
    if isinstance(value, list):
        for item in value:
            _expand_path(store, item, rest)
    else:
        _expand_path(store, value, rest)
