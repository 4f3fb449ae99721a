"""The installed environment: every extra's packages import (what `make lock` checks before it
writes constraints-cpu.txt, and what a fresh `make test` meets first)."""

from __future__ import annotations

import re
from pathlib import Path

from simgan.domains.calorimeter.sim.g4data import ensure_geant4_data
from simgan.extras import check_installed

REPO = Path(__file__).resolve().parents[2]


def test_every_extra_imports():
    ensure_geant4_data()  # geant4_pybind's import wants its data variables
    problems = check_installed()
    assert not problems, "broken extras in this environment:\n" + "\n".join(problems)


def test_check_names_a_broken_package(monkeypatch):
    """A package whose import fails is named, with its extra (here: uproot made unimportable,
    as a pyarrow built for numpy 2 made it beside numpy 1.26)."""
    import sys

    ensure_geant4_data()
    monkeypatch.setitem(sys.modules, "uproot", None)  # `import uproot` now raises ImportError
    problems = check_installed()
    assert any(p.startswith("extra 'root': uproot") and "import uproot" in p for p in problems), problems
    assert len(problems) == 1, problems


def test_lock_pins_what_is_installed():
    """The set-up installs the lock: each pinned distribution that is installed has its pinned
    version (a mismatch means the venv predates a refreshed lock: `make venv` rebuilds it)."""
    from importlib import metadata

    pins = {}
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    assert "torch" in pins and "numpy" in pins and "pyarrow" in pins
    wrong = []
    for name, version in pins.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-only pin
        if have.split("+")[0] != version:
            wrong.append(f"{name}: pinned {version}, installed {have}")
    assert not wrong, wrong
