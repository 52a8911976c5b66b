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


LOWER_LAYERS = ["services", "db", "billing"]


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


def test_channels_never_import_the_rest_api() -> None:
    # What they share with it (runtime, redemption threads, rate limits) is voms.serving.
    offenders = [(p.name, m) for p, m in _imports(SRC / "channels") if m.startswith("voms.api")]
    assert offenders == []


@pytest.mark.parametrize("layer", ["services", "db", "billing", "domain"])
def test_nothing_below_the_interfaces_imports_the_jobs_or_the_http_plumbing(layer: str) -> None:
    offenders = [
        (p.name, m) for p, m in _imports(SRC / layer) if m.startswith(("voms.jobs", "voms.serving"))
    ]
    assert offenders == []


def test_jobs_are_thin_they_touch_no_database_themselves() -> None:
    database = (
        "sqlalchemy",
        "voms.db.tables",
        "voms.db.engine",
        "voms.db.hot",
        "voms.services.uow",
    )
    offenders = [(p.name, m) for p, m in _imports(SRC / "jobs") if m.startswith(database)]
    assert offenders == []


def _calls_on_an_engine(path: Path) -> list[str]:
    """``….engine.begin()``, ``….engine.connect()`` and the like in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "engine"
        ):
            found.append(f"{path.name}:{node.lineno} engine.{node.func.attr}()")
    return found


def test_services_touch_the_database_only_through_the_unit_of_work() -> None:
    services = SRC / "services"
    hot_path = [
        (p.name, m)
        for p, m in _imports(services)
        if m.startswith(("voms.db.hot", "voms.db.engine")) and p.name != "uow.py"
    ]
    transactions = [call for p in services.rglob("*.py") for call in _calls_on_an_engine(p)]
    assert hot_path == []
    assert transactions == []


def test_the_result_body_is_made_by_the_result_model_only() -> None:
    # {"result_code": …, "result_text": …, …} built outside voms.domain.results would be a
    # second answer shape (a record that merely holds a code, among other fields, is not).
    offenders = [
        f"{path.relative_to(SRC)}:{node.lineno}"
        for path in SRC.rglob("*.py")
        if path != SRC / "domain" / "results.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Dict)
        and node.keys
        and isinstance(node.keys[0], ast.Constant)
        and node.keys[0].value == "result_code"
    ]
    assert offenders == []
