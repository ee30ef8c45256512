"""Imports go one way (STYLE.md): cli → app → api, dashboard → metering → billing → keys →
outbound → models, db → config, errors. Domain packages never import the web framework."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "meterapi"

# Higher ranks may import lower (or equal) ranks only.
RANKS: dict[str, float] = {
    "config": 0,
    "metrics": 0,
    "background": 0,
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


# -- what routes and the key service may reach ----------------------------------------------------

# Rooms whose modules answer requests; ``api.deps`` is where their dependencies are provided.
ROUTE_ROOMS = {"api", "gateway", "dashboard"}
PROVIDERS = {"meterapi.api.deps"}
# Runtime parts a route takes as a typed dependency (``KeyPolicyDep``, ``KeyGuardDep``...).
RUNTIME_PARTS_BY_DEPENDENCY = {"keys", "key_policy"}


def _attribute_chains(path: Path) -> list[str]:
    """Every dotted name in the module (``runtime.keys.pepper``, ``a.b().c`` as ``c``)."""
    chains = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts = [node.attr]
            value = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                parts.append(value.id)
            chains.append(".".join(reversed(parts)))
    return chains


def _reach_ins(path: Path) -> list[str]:
    wrong = []
    for chain in _attribute_chains(path):
        names = chain.split(".")
        for i, name in enumerate(names[:-1]):
            if name == "runtime" and names[i + 1] in RUNTIME_PARTS_BY_DEPENDENCY:
                wrong.append(chain)
        if names[-1] in {"stripe_price_id", "pepper_bytes"}:
            wrong.append(chain)
    return wrong


def test_routes_take_dependencies_instead_of_reaching_through_the_runtime() -> None:
    """The key machinery, the key policy and the price id come from ``api.deps`` providers,
    so ``app.dependency_overrides`` replaces them everywhere."""
    wrong = [
        f"{name}: {chain}"
        for name, path in _modules()
        if _room(name) in ROUTE_ROOMS and name not in PROVIDERS
        for chain in _reach_ins(path)
    ]
    assert wrong == []


def test_live_or_test_keys_are_worked_out_in_one_place() -> None:
    allowed = {"meterapi.keys.policy", "meterapi.keys.format", "meterapi.config"}
    wrong = [
        f"{name}: {chain}"
        for name, path in _modules()
        if name not in allowed
        for chain in _attribute_chains(path) + _imported_names(path)
        if chain.split(".")[-1] in {"is_live_stripe_key", "pepper_bytes"}
    ]
    assert wrong == []


def _imported_names(path: Path) -> list[str]:
    return [
        alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]


def test_the_key_service_is_database_work_only() -> None:
    """Authentication (digest, cache, fill, access policy) is ``keys.guard``'s alone."""
    service = SRC / "keys" / "service.py"
    authenticator_parts = {
        "meterapi.keys.cache",
        "meterapi.keys.guard",
        "meterapi.keys.access_policy",
    }
    imported = set(_imports(service)) | {
        f"meterapi.keys.{name}"
        for name in _imported_names(service)
        if (SRC / "keys" / f"{name}.py").exists()
    }
    assert imported & authenticator_parts == set()
    assert "KeyCache" not in service.read_text()


RETIRED_MODULES = {
    # The access policy is keys.access_policy; billing's cache bump is billing.access_changes.
    "meterapi.keys.access",
    "meterapi.billing.access",
}


def test_retired_module_names_stay_retired() -> None:
    names = {name for name, _ in _modules()}
    assert names & RETIRED_MODULES == set()
    wrong = [f"{n} imports {t}" for n, p in _modules() for t in _imports(p) if t in RETIRED_MODULES]
    assert wrong == []


def _word_count(name: str) -> int:
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    roots = [SRC, SRC.parents[1] / "tests", SRC.parents[1] / "bench"]
    return sum(len(pattern.findall(p.read_text())) for root in roots for p in root.rglob("*.py"))


def test_no_dead_dependency_aliases_or_key_constants() -> None:
    """Every ``XDep`` alias of ``api.deps`` and every constant of ``keys`` is used somewhere
    besides its definition."""
    defined = []
    for name, path in _modules():
        if name != "meterapi.api.deps" and _room(name) != "keys":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Name) and (
                    target.id.endswith("Dep") or target.id.isupper()
                ):
                    defined.append(target.id)
    assert defined
    assert [name for name in defined if _word_count(name) < 2] == []


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


# The process-wide tuning calls: the collector's, and the interpreter's thread switch interval.
_TUNING = {"gc": None, "sys": {"setswitchinterval"}}


def _tuning_calls(path: Path) -> list[str]:
    return [
        f"{path.name}:{node.lineno} calls {node.func.value.id}.{node.func.attr}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in _TUNING
        and (_TUNING[node.func.value.id] or {node.func.attr}) >= {node.func.attr}
    ]


def test_only_the_serving_process_entrypoint_tunes_the_process() -> None:
    # Process-wide state: an app factory that changed it would change every app in the process.
    wrong = [
        found
        for name, path in _modules()
        if name != "meterapi.cli.serve"
        for found in _tuning_calls(path)
    ]
    assert wrong == []
    # The checker sees the calls that exist, of both kinds.
    seen = {call.split(" calls ")[1] for call in _tuning_calls(SRC / "cli" / "serve.py")}
    assert {"gc.freeze", "sys.setswitchinterval"} <= seen


def _commits(path: Path) -> list[str]:
    return [
        f"{path.name}:{node.lineno} calls .commit()"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "commit"
    ]


def test_routes_commit_early_only_through_a_helper_that_says_why() -> None:
    # The request's session commits after the endpoint (api.deps); an earlier commit goes
    # through db.release_before_waiting or db.commit_before_announcing.
    web_rooms = {"api", "dashboard", "gateway"}
    wrong = [
        found for name, path in _modules() if _room(name) in web_rooms for found in _commits(path)
    ]
    assert wrong == []
    assert _commits(SRC / "db.py") != []  # the checker sees the calls that exist


MAX_MODULE_LINES = 400


def test_no_module_is_two_rooms() -> None:
    # Past ~400 lines a module is usually two jobs: split it into rooms with one job each.
    long = {
        name: lines
        for name, path in _modules()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_page_script_is_two_rooms() -> None:
    # The same for the pages' scripts: a card with its own job is a module of its own.
    scripts = sorted((SRC / "dashboard" / "static").glob("*.js"))
    long = {
        path.name: lines
        for path in scripts
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert scripts and long == {}


def _hand_written_error_bodies(path: Path) -> list[str]:
    return [
        f"{path.name}:{node.lineno} writes an error body by hand"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "error" for k in node.keys)
    ]


def test_error_bodies_are_rendered_in_one_place() -> None:
    # {"error": {"code", "message"}} is spelled once, in api/errors.py; everything else raises
    # a DomainError or calls its renderer.
    wrong = [
        found
        for name, path in _modules()
        if _room(name) != "stripe_emulator" and name != "meterapi.api.errors"
        for found in _hand_written_error_bodies(path)
    ]
    assert wrong == []
    assert _hand_written_error_bodies(SRC / "api" / "errors.py") != []


def _engine_reach_ins(path: Path) -> list[str]:
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
        found
        for name, path in _modules()
        if name != "meterapi.db"
        for found in _engine_reach_ins(path)
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
    assert [f.split(" ", 1)[0] for f in _engine_reach_ins(bad)] == ["bad.py:1", "bad.py:3"]
