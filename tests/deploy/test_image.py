"""The image, checked without a Docker daemon (none runs here, and base images come from
a registry this machine cannot reach): the Dockerfile's rules, and the package its
build stage installs, built from exactly what .dockerignore lets into the build
context, holds every module the rendered manifests run and every file those modules
read at run time (migrations, generated protobuf code)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, Rendered
from tests.deploy.test_manifests import audiences_workloads, pod

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "Dockerfile"
# The uid:gid the runtime stage runs as, which every manifest's securityContext names.
RUNTIME_USER = (10001, 10001)


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into stages."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _context_files() -> list[Path]:
    """The files `docker build .` sends: tracked files that .dockerignore admits."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    sent = []
    for name in tracked:
        included = True
        for pattern in (p for p in patterns if not p.startswith("#")):
            negated = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(name, body) or name.startswith(body + "/"):
                included = negated
        if included:
            sent.append(Path(name))
    return sent


def test_two_stages_on_one_pinned_base_the_last_without_compilers() -> None:
    build, runtime = _stages()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base is not None
    # A full version tag (python:3.11.11-slim-...), not a moving one like python:3.
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    assert build[0].split()[1] == runtime[0].split()[1] == "${PYTHON_IMAGE}"
    assert any("build-essential" in line for line in build)
    runtime_text = "\n".join(runtime)
    for tool in ("build-essential", "gcc", "g++", "make ", "git"):
        assert tool not in runtime_text, tool
    assert any(line.startswith("COPY --from=build /opt/venv") for line in runtime)


def test_the_runtime_runs_as_the_manifests_non_root_user_by_module(
    rendered: dict[str, Rendered],
) -> None:
    _, runtime = _stages()
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users == [":".join(map(str, RUNTIME_USER))]
    assert 'ENTRYPOINT ["python", "-m"]' in runtime
    for workload in audiences_workloads(rendered["prod"]):
        context = pod(workload)["spec"]["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == RUNTIME_USER


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    sent = _context_files()
    tops = {path.parts[0] for path in sent}
    assert tops == {"pyproject.toml", "README.md", "services", "gen"}
    assert not [p for p in sent if p.suffix == ".pyc" or "__pycache__" in p.parts]


def test_the_installed_package_holds_every_module_the_manifests_run(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    # The build stage's `pip install --no-deps .`, as a wheel of the same context.
    context = tmp_path / "context"
    for path in _context_files():
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, context / path)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(tmp_path / "wheel"), str(context)),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    installed = set(zipfile.ZipFile(wheel).namelist())

    commands = set()
    for name in ("base", "dev", "prod"):
        for workload in audiences_workloads(rendered[name]):
            for container in pod(workload)["spec"]["containers"]:
                commands.add(container["args"][0])
    assert "services.segmentation.realtime" in commands
    for module in commands:
        path = module.replace(".", "/")
        assert f"{path}/__main__.py" in installed or f"{path}.py" in installed, module

    # Read at run time: Alembic's files (migrate) and the generated protobuf modules.
    migrations = ROOT / "services/shared/db/migrations"
    for migration in [*migrations.glob("*.py"), *migrations.glob("*.mako")]:
        assert str(migration.relative_to(ROOT)) in installed, migration.name
    for migration in (migrations / "versions").glob("*.py"):
        assert str(migration.relative_to(ROOT)) in installed, migration.name
    for proto in (ROOT / "protos/audiences/v1").glob("*.proto"):
        assert f"audiences/v1/{proto.stem}_pb2.py" in installed, proto.name
