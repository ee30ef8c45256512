"""The emulator's in-memory store: Stripe-shaped objects, optionally persisted as one JSON file."""

from __future__ import annotations

import calendar
import copy
import datetime as dt
import json
import os
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

API_VERSION = "2026-10-28.endive"

# Collections keyed by object id. The stored dict *is* the wire object, so a retrieve is a copy.
COLLECTIONS = (
    "customers",
    "products",
    "prices",
    "meters",
    "checkout_sessions",
    "subscriptions",
    "invoices",
    "portal_sessions",
    "events",
)

# Which collection an id belongs to, by prefix (used by `expand`). Longest prefixes first.
_PREFIXES = (
    ("cs_test_", "checkout_sessions"),
    ("cus_", "customers"),
    ("prod_", "products"),
    ("price_", "prices"),
    ("mtr_", "meters"),
    ("sub_", "subscriptions"),
    ("in_", "invoices"),
    ("bps_", "portal_sessions"),
    ("evt_", "events"),
)

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: the prefix and random letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


def add_months(ts: int, months: int) -> int:
    """Move a unix time by calendar months, clamping the day as Stripe's billing anchors do."""
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    month_index = d.month - 1 + months
    year, month = d.year + month_index // 12, month_index % 12 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


def public(obj: JSON) -> JSON:
    """A deep copy for the wire: top-level keys starting with `_` are the emulator's own notes."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}


def collection_for(object_id: str) -> str | None:
    for prefix, name in _PREFIXES:
        if object_id.startswith(prefix):
            return name
    return None


@dataclass
class SavedResponse:
    """What an Idempotency-Key replays: the request's fingerprint and the first response."""

    fingerprint: str
    status: int
    body: bytes
    created: float


@dataclass
class Store:
    """Everything the emulator knows. Mutated only from the server's event loop thread."""

    objects: dict[str, dict[str, JSON]] = field(
        default_factory=lambda: {name: {} for name in COLLECTIONS}
    )
    # Meter events keep arrival order; each is the wire object plus emulator bookkeeping
    # (`customer`, `value`, `canceled`, `meter`) under the `_emulator` key.
    meter_events: list[JSON] = field(default_factory=list)
    meter_event_index: dict[str, JSON] = field(default_factory=dict)  # by identifier
    v2_sessions: dict[str, JSON] = field(default_factory=dict)
    idempotency: dict[str, SavedResponse] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, JSON]:
        return self.objects[name]

    def get(self, name: str, object_id: str) -> JSON | None:
        return self.objects[name].get(object_id)

    def put(self, name: str, obj: JSON) -> JSON:
        self.objects[name][obj["id"]] = obj
        return obj

    def find(self, object_id: str) -> JSON | None:
        """Look an id up in whichever collection its prefix names."""
        name = collection_for(object_id)
        return None if name is None else self.objects[name].get(object_id)

    def add_meter_event(self, event: JSON) -> None:
        self.meter_events.append(event)
        self.meter_event_index[event["identifier"]] = event

    def reset(self) -> None:
        self.objects = {name: {} for name in COLLECTIONS}
        self.meter_events = []
        self.meter_event_index = {}
        self.v2_sessions = {}
        self.idempotency = {}

    # Persistence: idempotency records are not saved (they are a 24 h cache in Stripe too).
    def dump(self) -> JSON:
        return {
            "objects": self.objects,
            "meter_events": self.meter_events,
            "v2_sessions": self.v2_sessions,
        }

    def load(self, data: JSON) -> None:
        self.reset()
        for name in COLLECTIONS:
            self.objects[name] = dict(data.get("objects", {}).get(name, {}))
        for event in data.get("meter_events", []):
            self.add_meter_event(event)
        self.v2_sessions = dict(data.get("v2_sessions", {}))

    def save_to(self, path: str) -> None:
        """Write atomically, so a crash mid-write leaves the previous file intact."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.dump()), encoding="utf-8")
        os.replace(tmp, target)

    @classmethod
    def load_from(cls, path: str) -> Store:
        store = cls()
        target = Path(path)
        if target.exists():
            store.load(json.loads(target.read_text(encoding="utf-8")))
        return store
