"""The built wheel carries its migrations: installed (not editable), ``meterapi db upgrade``
works away from the source checkout. (``.ci/wheel-check`` installs it into a fresh venv and
serves a paid call from it.)"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "src" / "meterapi" / "alembic"


def test_the_wheel_ships_the_migrations_and_they_run(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("meterapi-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        site = tmp_path / "site"
        archive.extractall(site)
    expected = {"meterapi/alembic/env.py", "meterapi/alembic/script.py.mako"} | {
        f"meterapi/alembic/versions/{p.name}" for p in (SCRIPTS / "versions").glob("*.py")
    }
    assert expected <= names, expected - names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    # The unpacked wheel stands in for site-packages; nothing of the checkout is importable.
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERAPI_")}
    env["PYTHONPATH"] = str(site)
    url = f"sqlite+aiosqlite:///{work / 'fresh.db'}"
    script = (
        "import meterapi, meterapi.migrations as m, sqlite3, sys\n"
        f"assert meterapi.__file__.startswith({str(site)!r}), meterapi.__file__\n"
        f"m.upgrade({url!r})\n"
        f"rows = sqlite3.connect({str(work / 'fresh.db')!r}).execute(\n"
        "    \"select name from sqlite_master where type='table'\").fetchall()\n"
        "print(sorted(r[0] for r in rows))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=work, env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert "alembic_version" in ran.stdout and "api_key" in ran.stdout, ran.stdout
