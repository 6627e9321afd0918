"""Each service is deployable and restartable alone: no service package imports another
service's package, and services/shared (the library every service stands on) imports no
service. Imports are read with `ast`, so an import inside a function counts as much as
one at the top, and so does a module named to importlib as a string literal.

Two compositions are the exceptions: services/dev_runner.py (`make run`) imports every
service's app module and nothing deeper (checked below), and the migrations' metadata
loader (services/shared/db/migrate.py, load_metadata) imports every `tables.py` it finds
on disk so Alembic migrates one schema; it names no service, and runs as the
migrations step, not inside a service.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "segmentation", "prediction", "profile", "sync")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, anywhere in it, with the line: `import a.b`,
    `from a.b import c` (as a.b and a.b.c), and any string literal that is exactly a
    service module's dotted path (importlib.import_module on it is still an import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("services.x.y"), or such a path kept in a list
            # and imported in a loop: any string that is exactly a service module.
            if _looks_like_service_module(node.value):
                found.append((node.lineno, node.value))
    return sorted(found)


def _looks_like_service_module(text: str) -> bool:
    return any(text == f"services.{s}" or text.startswith(f"services.{s}.") for s in SERVICES)


def service_of(module: str) -> str | None:
    """The service a dotted module belongs to (None for shared, gen, libraries)."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "services" and parts[1] in SERVICES:
        return parts[1]
    return None


def boundary_violations(root: Path) -> list[str]:
    """`path:line imports module` for every import across a service boundary."""
    violations: list[str] = []
    for package in (*SERVICES, "shared"):
        for path in sorted((root / "services" / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for line, module in imported_modules(path):
                target = service_of(module)
                # shared imports no service, nor the composition that imports them all.
                composition = package == "shared" and module.startswith("services.dev_runner")
                if composition or target not in (None, package):
                    violations.append(f"{relative}:{line} imports {module}")
    return violations


def test_no_service_imports_another_and_shared_imports_none() -> None:
    assert boundary_violations(ROOT) == []


def test_the_dev_runner_takes_only_each_services_app() -> None:
    # `make run` composes every service from its ServiceSpec; reaching past a service's
    # app module would tie the runner to its internals.
    path = ROOT / "services" / "dev_runner.py"
    beyond_app = [
        f"services/dev_runner.py:{line} imports {module}"
        for line, module in imported_modules(path)
        if (service := service_of(module)) is not None
        and module.split(".")[:3] != ["services", service, "app"]
        and module != f"services.{service}"
    ]
    assert beyond_app == []


def test_every_service_package_is_checked() -> None:
    # A new service folder that the list above forgets would go unchecked.
    on_disk = {
        path.name
        for path in (ROOT / "services").iterdir()
        if path.is_dir() and (path / "__init__.py").exists()
    }
    assert on_disk == {*SERVICES, "shared"}


def test_the_check_sees_imports_in_functions_and_by_name(tmp_path: Path) -> None:
    profile = tmp_path / "services" / "profile"
    shared = tmp_path / "services" / "shared"
    profile.mkdir(parents=True)
    shared.mkdir(parents=True)
    (profile / "store.py").write_text(
        "from services.profile import model\n"
        "from services.shared.db import tables\n"
        "def erase():\n"
        "    from services.segmentation.store import exit_every_audience\n"
    )
    (shared / "cli.py").write_text(
        "import importlib\n"
        "def rebuild():\n"
        "    import services.ingest.publisher\n"
        "    importlib.import_module('services.sync.app')\n"
        "    from services import dev_runner\n"
    )
    assert boundary_violations(tmp_path) == [
        "services/profile/store.py:4 imports services.segmentation.store",
        "services/profile/store.py:4 imports services.segmentation.store.exit_every_audience",
        "services/shared/cli.py:3 imports services.ingest.publisher",
        "services/shared/cli.py:4 imports services.sync.app",
        "services/shared/cli.py:5 imports services.dev_runner",
    ]


def test_the_change_log_contract_reads_what_segmentation_defines() -> None:
    # The shared change-log module reads two columns of segmentation's audiences table
    # and names the record kinds; a rename on either side must fail here, not in an
    # erasure in production.
    from services.segmentation import model, tables
    from services.shared.db import membership_log

    owner = tables.audiences
    for read_model in (membership_log.audience_versions_read, membership_log.audience_keys_read):
        for read in read_model.c:
            assert read.name in owner.c, read.name
            assert type(read.type) is type(owner.c[read.name].type), read.name
    assert (membership_log.ENTERED, membership_log.EXITED) == (model.ENTERED, model.EXITED)


def test_the_cli_is_a_client_that_imports_no_service() -> None:
    # `audiences` talks to the services over the generated stubs like any client; it
    # may use shared settings and errors, never a service's internals.
    reached = [
        f"{path.relative_to(ROOT).as_posix()}:{line} imports {module}"
        for path in sorted((ROOT / "audiences_cli").rglob("*.py"))
        for line, module in imported_modules(path)
        if service_of(module) is not None or module.startswith("services.dev_runner")
    ]
    assert reached == []
