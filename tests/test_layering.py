"""DESIGN.md's layering rule, checked on every import statement (inside functions too).

runtime/      imports none of actors, api, cuda, worker_orcd
cuda/         imports only runtime (of ours)
actors/       imports runtime (never api, cuda or worker_orcd)
api/          imports runtime and the service layer (actors.service) only
worker_orcd/  the entry points: may import everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("runtime", "actors", "api", "cuda", "worker_orcd")
ALLOWED = {
    "runtime": {"runtime"},
    "cuda": {"runtime", "cuda"},
    "actors": {"runtime", "actors"},
    "api": {"runtime", "api", "actors.service"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of one of our packages in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in OURS]
    return found


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layering_rule_allows(package):
    violations = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in sorted((REPO / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if not _allowed(module, ALLOWED[package])
    ]
    assert violations == []


def test_the_checker_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from actors.jobs import Job\n    import cuda.engine\n")
    assert imported_modules(source) == [(2, "actors.jobs"), (3, "cuda.engine")]
    assert not _allowed("actors.jobs", ALLOWED["api"])
    assert _allowed("actors.service", ALLOWED["api"])


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_console_script_is_the_top_level_entry_point():
    project = _pyproject()
    assert project["project"]["scripts"]["worker-orcd"] == "worker_orcd.cli:main"
    assert "worker_orcd" in project["tool"]["setuptools"]["packages"]


def test_every_package_folder_is_installed():
    """`pip install .` (the README's run command) copies only the listed packages: a folder of
    modules left out is missing on a fresh machine (runtime.models was, until 2026-12-02)."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    for top in {name.split(".")[0] for name in listed}:
        for folder in [REPO / top, *(p for p in (REPO / top).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(folder.glob("*.py")):
                continue
            name = ".".join(folder.relative_to(REPO).parts)
            assert name in listed, f"{name} has modules but is not in [tool.setuptools] packages"
