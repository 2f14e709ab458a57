"""``pip install .`` installs obsflow under one import name, ``obsflow``."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_puts_only_obsflow_in_site_packages(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    before = {p.name for p in site.iterdir()}
    # --no-deps: the point is what obsflow itself puts in site-packages, not its dependencies.
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(ROOT)],
        check=True,
        cwd=tmp_path,
    )
    added = {p.name for p in site.iterdir()} - before
    assert {n for n in added if not n.endswith(".dist-info")} == {"obsflow"}, added
    assert {p.name for p in (site / "obsflow").iterdir()} >= {"connectors", "flows"}
    assert not (site / "flows").exists()
    assert not (site / "connectors").exists()
    # every package of the tree is installed, with all its modules (a sub-package missing
    # from pyproject's list would import here, from the checkout, and fail once installed)
    for top in ("connectors", "flows"):
        for init in (ROOT / top).rglob("__init__.py"):
            package = init.parent.relative_to(ROOT)
            for module in init.parent.glob("*.py"):
                assert (site / "obsflow" / package / module.name).is_file(), module
    assert (site / "obsflow" / "flows" / "static" / "app.js").is_file()  # (package data)
    # The modules import by their installed names (a stdlib-only check: no dependencies here).
    check = "import importlib.util as u; print(u.find_spec('obsflow.flows.cli.main').origin)"
    origin = subprocess.run(
        [str(python), "-c", check], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.strip()
    assert origin == str(site / "obsflow" / "flows" / "cli" / "main.py")
    assert sys.version_info >= (3, 11)


def test_make_demo_installs_only_what_running_needs_and_shows_pip_progress() -> None:
    """Issue 12, finding 12: ``make demo`` used to install the whole test toolchain silently.
    Its recipe chain now installs ``-e .`` (the runtime dependencies) with pip's progress bar,
    and those dependencies hold no test tool. It adds the ``sql`` extra (DuckDB), which
    ``obsflow sql`` needs, and nothing else."""
    import tomllib

    dry = subprocess.run(
        ["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    installs = [ln for ln in dry.splitlines() if "pip install" in ln]
    assert installs, dry
    assert all("--progress-bar on" in ln for ln in installs), installs
    assert any(ln.rstrip().endswith("-e '.[sql]'") for ln in installs), installs
    assert not any("[test]" in ln for ln in installs), installs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [*project["dependencies"], *project["optional-dependencies"]["sql"]]
    names = {d.split("=")[0].split(">")[0].split("<")[0].strip() for d in runtime}
    assert names == {"bytewax", "deltalake", "numpy", "pandas", "pyarrow", "s3fs", "duckdb"}
