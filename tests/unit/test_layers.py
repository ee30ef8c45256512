"""Imports go one way (STYLE.md): cli → app → api, dashboard → metering → billing → keys →
outbound → models, db → config, errors. Domain packages never import the web framework."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "meterapi"

# Higher ranks may import lower (or equal) ranks only.
RANKS: dict[str, float] = {
    "config": 0,
    "metrics": 0,
    "errors": 0,
    "db": 1,
    "models": 1,
    "migrations": 1,
    "alembic": 1,  # the migration scripts, shipped in the package
    "outbound": 1.5,  # the outbox is written by keys and billing, so it sits below them
    "keys": 2,
    "billing": 3,
    "metering": 4,
    "runtime": 5,
    "api": 6,
    "dashboard": 6,
    "gateway": 6.5,  # builds on the paid API (api), mounted by the app
    "app": 7,
    "cli": 8,
    "emulator_mode": 8,  # `meterapi serve` without a Stripe key; used by cli only
}
DOMAIN = {"keys", "billing", "metering", "outbound"}
WEB_FRAMEWORKS = {"fastapi", "starlette"}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def _modules() -> list[tuple[str, Path]]:
    return [
        ("meterapi." + ".".join(p.relative_to(SRC).with_suffix("").parts), p)
        for p in SRC.rglob("*.py")
    ]


def test_every_room_has_a_rank() -> None:
    rooms = {_room(name) for name, _ in _modules()} - {"__init__", "__main__", "stripe_emulator"}
    assert rooms <= set(RANKS), rooms - set(RANKS)


def test_imports_point_down() -> None:
    wrong = []
    for name, path in _modules():
        room = _room(name)
        for target in _imports(path):
            if not target.startswith("meterapi."):
                continue
            target_room = _room(target)
            if target_room == "stripe_emulator":
                if room not in {"cli", "emulator_mode", "app", "stripe_emulator"}:
                    wrong.append(f"{name} imports {target}")
                continue
            if room == "stripe_emulator":
                wrong.append(f"{name} imports {target}: the emulator stands alone")
                continue
            if room in RANKS and target_room in RANKS and RANKS[target_room] > RANKS[room]:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_domain_packages_do_not_import_the_web_framework() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, path in _modules()
        if _room(name) in DOMAIN
        for target in _imports(path)
        if target.split(".")[0] in WEB_FRAMEWORKS or target.startswith("meterapi.api")
    ]
    assert wrong == []


def test_only_the_gateway_imports_stripe() -> None:
    allowed = {"meterapi.billing.gateway"}
    wrong = [
        name
        for name, path in _modules()
        if _room(name) != "stripe_emulator"
        and name not in allowed
        and any(t.split(".")[0] == "stripe" for t in _imports(path))
    ]
    assert wrong == []


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from meterapi.api.deps import SessionDep\nimport fastapi\n")
    assert _imports(bad) == ["meterapi.api.deps", "fastapi"]


def _backend_checks(path: Path) -> list[str]:
    """Places that tell the database backends apart by hand instead of calling db.is_postgres."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "name"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "dialect"
        ):
            found.append(f"{path.name}:{node.lineno} reads dialect.name")
        elif isinstance(node, ast.Compare | ast.Call) and any(
            isinstance(c, ast.Constant) and c.value in {"postgresql", "sqlite"}
            for c in ast.walk(node)
            if isinstance(node, ast.Compare) or _is_startswith(node)
        ):
            found.append(f"{path.name}:{node.lineno} compares a backend name")
    return found


def _is_startswith(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "startswith"
    )


def test_the_backend_is_told_apart_in_db_only() -> None:
    wrong = [
        found
        for name, path in _modules()
        if name != "meterapi.db" and _room(name) != "stripe_emulator"
        for found in _backend_checks(path)
    ]
    assert wrong == []


def test_the_backend_checker_sees_a_hand_written_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "a = session.get_bind().dialect.name\n"
        "b = url.startswith('postgresql')\n"
        "c = name == 'sqlite'\n"
        "d = BigInteger().with_variant(Integer(), 'sqlite')\n"
    )
    assert [f.split(" ", 1)[0] for f in _backend_checks(bad)] == [
        "bad.py:1",
        "bad.py:2",
        "bad.py:3",
    ]


def _reach_ins(path: Path) -> list[str]:
    """An engine dug out of a sessionmaker (``.kw["bind"]``), or planner settings changed by hand
    (``enable_seqscan``, ``enable_bitmapscan``…) instead of through ``db.index_scans_only``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "kw"
            and isinstance(node.slice, ast.Constant)
            and node.slice.value == "bind"
        ):
            found.append(f"{path.name}:{node.lineno} reads a sessionmaker's bind")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "enable_" in node.value
            and ("scan" in node.value or "set_config" in node.value)
        ):
            found.append(f"{path.name}:{node.lineno} sets the planner")
    return found


def test_engines_are_passed_and_the_planner_is_set_in_db_only() -> None:
    wrong = [
        found for name, path in _modules() if name != "meterapi.db" for found in _reach_ins(path)
    ]
    assert wrong == []


def test_the_reach_in_checker_sees_both(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "engine = sessionmaker.kw['bind']\n"
        "info = sessionmaker.kw.get('info')\n"
        "q = text(\"SELECT set_config('enable_seqscan', 'off', true)\")\n"
        "ok = 'enable'\n"
    )
    assert [f.split(" ", 1)[0] for f in _reach_ins(bad)] == ["bad.py:1", "bad.py:3"]
