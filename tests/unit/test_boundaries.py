"""The layers of ARCHITECTURE.md, enforced on the source."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "voms"


def _imports(folder: Path) -> list[tuple[Path, str]]:
    found = []
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(path, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.append((path, node.module))
    return found


def test_the_domain_imports_no_framework_and_no_io() -> None:
    forbidden = (
        "fastapi",
        "starlette",
        "sqlalchemy",
        "pydantic",
        "voms.services",
        "voms.db",
        "voms.api",
        "requests",
        "httpx",
    )
    offenders = [(p.name, m) for p, m in _imports(SRC / "domain") if m.startswith(forbidden)]
    assert offenders == []


LOWER_LAYERS = [name for name in ("services", "db", "billing", "jobs") if (SRC / name).is_dir()]


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_never_import_the_web_framework(layer: str) -> None:
    offenders = [
        (p.name, m)
        for p, m in _imports(SRC / layer)
        if m.startswith(("fastapi", "starlette", "voms.api", "voms.channels", "voms.web"))
    ]
    assert offenders == []


def test_channels_never_touch_the_database() -> None:
    offenders = [
        (p.name, m)
        for p, m in _imports(SRC / "channels")
        if m.startswith(("sqlalchemy", "voms.db"))
    ]
    assert offenders == []
