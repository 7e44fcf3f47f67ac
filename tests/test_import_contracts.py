"""The allowed dependencies between areas (docs/architecture.md) hold, and a planted leak breaks them.

The contracts live in pyproject.toml under ``[tool.importlinter]`` (issue 8 item 3). Like the route-gate
guard, these tests keep a structural rule true: a new import from one area into another's tables or views,
from a lower layer into a higher one, or from the rules into a front door fails here and in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# an area's public surface; every other module of an area must be protected by a contract
PUBLIC = {"__init__", "service", "states", "errors"}
AREAS = ("users", "kyc", "agencies", "fleet", "availability", "bookings", "payments", "handover", "charges",
         "privacy", "vault", "notifications")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(  # noqa: S603 - our own dev tool, fixed arguments
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=240, check=False,
    )


def _contracts() -> list[dict]:  # type: ignore[type-arg]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["contracts"])


def test_import_contracts_hold() -> None:  # issue 8 item 3
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "planted", "broken"), [
    # a lower area reaching up into a higher one's tables: layers and bookings' public surface
    ("marketplace/kyc/service.py", "from marketplace.bookings.models import Booking", "marketplace.kyc.service"),
    # an area's rules importing an API view (a front door)
    ("marketplace/fleet/service.py", "from marketplace.users import views", "marketplace.fleet.service"),
    # one front door reaching into another
    ("agency_app/views.py", "from marketplace.console import views", "agency_app.views"),
    # a library used outside the adapter that wraps it
    ("marketplace/bookings/service.py", "from cryptography.hazmat.primitives import hashes",
     "marketplace.bookings.service"),
    # stripe outside the payments gateway (issue 9: the gateway is the only module that imports it)
    ("marketplace/bookings/service.py", "import stripe", "marketplace.bookings.service"),
    # an area writing a car's time past availability's verbs (issue 8 item 1)
    ("marketplace/bookings/service.py", "from marketplace.availability.models import VehicleOccupancy",
     "marketplace.bookings.service"),
    # availability reaching up into an area that calls it (it is keyed by ids and imports no area)
    ("marketplace/availability/service.py", "from marketplace.fleet import service as fleet",
     "marketplace.availability.service"),
    # a front door reaching past the payments service into its gateway
    ("agency_app/views.py", "from marketplace.payments.gateway import Gateway", "agency_app.views"),
])
def test_a_planted_leak_breaks_the_contracts(tmp_path: Path, module: str, planted: str, broken: str) -> None:
    """Negative control: the same contracts on a copy of the code with one extra forbidden import fail."""
    for package in ("marketplace", "agency_app"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted leak\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout


def test_every_area_module_is_public_or_protected() -> None:
    """A new module in an area is private until a contract protects it (fail closed, not open)."""
    protected = {module for contract in _contracts() if contract["type"] == "protected"
                 for module in contract["protected_modules"]}
    unlisted = []
    for area in AREAS:
        folder = ROOT / "marketplace" / area
        if not folder.is_dir():
            continue  # an area still to be built (payments, handover, ...)
        for path in folder.iterdir():
            name = path.stem if path.suffix == ".py" else path.name
            is_module = path.suffix == ".py" or (path / "__init__.py").exists()
            if is_module and name not in PUBLIC and f"marketplace.{area}.{name}" not in protected:
                unlisted.append(f"marketplace.{area}.{name}")
    assert not unlisted, f"list these in a protected contract in pyproject.toml, or make them public: {unlisted}"


def test_every_ignored_import_says_why() -> None:
    """Each tolerated leak carries its reason, so the list reads as the work left (docs/architecture.md)."""
    entry = re.compile(r'^\s*"[\w.*]+ -> [\w.*]+",\s*(#.*)?$')
    bare = [line.strip() for line in (ROOT / "pyproject.toml").read_text().splitlines()
            if entry.match(line) and "#" not in line]
    assert not bare, bare
