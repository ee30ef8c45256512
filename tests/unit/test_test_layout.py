"""The suite's own house rules: one set of helpers, and the app's insides reached in one place."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
INTERNALS = TESTS / "integration" / "internals.py"


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in TESTS.rglob("*.py")}


def test_only_the_internals_module_reaches_into_app_state() -> None:
    reaching = [
        str(path.relative_to(TESTS))
        for path, text in _sources().items()
        if path not in {INTERNALS, Path(__file__).resolve()} and ".state.runtime" in text
    ]
    assert reaching == [], "go through tests/integration/internals.py (and say why there)"


def test_each_shared_helper_is_defined_once() -> None:
    shared = ["stripe_total", "ledger_total", "service_env", "flush_usage", "meterapi"]
    for name in shared:
        where = [
            str(path.relative_to(TESTS))
            for path, text in _sources().items()
            if re.search(rf"^(async )?def {name}\(", text, re.MULTILINE)
        ]
        assert len(where) == 1, (name, where)


def test_the_app_fixture_is_defined_once() -> None:
    defining = [
        str(path.relative_to(TESTS))
        for path, text in _sources().items()
        if re.search(r"@pytest\.fixture[^\n]*\n(async )?def app\(", text)
    ]
    assert defining == ["conftest.py"], "override `settings` in a module instead"
