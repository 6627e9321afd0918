"""deploy/k8s holds what it promises: every rendered object is valid against the
Kubernetes API schemas (strict: unknown fields fail), passes checkov's Kubernetes
policies (the few skipped ones say why), and our own rules: every Audiences workload
probes grpc.health.v1 and has limits and a locked-down securityContext, every
container port is exposed by its Service and admitted by its NetworkPolicy, the drain
fits in the termination grace, and every environment variable the code reads is set."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from services.shared.config import DEFAULT_PORTS
from tests.deploy.conftest import CHECKOV, OVERLAYS, ROOT, Rendered

pytestmark = pytest.mark.unit

# The Kubernetes version the schemas are checked against: the newest the pinned
# kubernetes-validate knows (the manifests use nothing newer than 1.30: preStop sleep).
KUBERNETES_VERSION = kubernetes_validate.latest_version()

# checkov policies not applied, each with why.
CHECKOV_SKIPS = {
    # The image is pinned by tag in git; the release pipeline pins the digest with
    # `kustomize edit set image` (docs/operations.md). A digest in git would be stale
    # after every build.
    "CKV_K8S_43": "image digests are set at release time",
    # Every process reads its settings, secrets included, from the environment
    # (services/shared/config.py: one image for embedded, tests and Kubernetes); the
    # Secrets are mounted as env from their own objects, never written in a manifest.
    "CKV_K8S_35": "the code reads settings from environment variables",
}
# dev only: images built on the developer's machine and loaded into a local cluster
# (kind, minikube) exist nowhere to pull from, so dev does not force a pull.
CHECKOV_DEV_SKIPS = {"CKV_K8S_15": "dev runs locally loaded images (IfNotPresent)"}

WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")
# Workloads that run to completion: no probes, no ports, no disruption budget.
BATCH = ("Job", "CronJob")


def workloads(rendered: Rendered) -> Iterator[dict[str, Any]]:
    """Every object that runs pods."""
    for kind in WORKLOADS:
        yield from rendered.of_kind(kind)


def audiences_workloads(rendered: Rendered) -> Iterator[dict[str, Any]]:
    """The workloads running the Audiences image (not dev's Postgres, Redis, collector)."""
    for workload in workloads(rendered):
        if workload["metadata"]["labels"].get("app.kubernetes.io/name") == "audiences":
            yield workload


def servers(rendered: Rendered) -> Iterator[dict[str, Any]]:
    """The long-running Audiences processes (everything but the migrations Job and the
    training CronJob)."""
    for workload in audiences_workloads(rendered):
        if workload["kind"] not in BATCH:
            yield workload


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """True when a matchLabels selector matches these labels."""
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(params=["base", *OVERLAYS])
def each(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """Base and each overlay in turn."""
    return rendered[request.param]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Rendered:
    """Each deployable overlay in turn."""
    return rendered[request.param]


def test_every_object_is_valid_against_the_api_schemas(each: Rendered) -> None:
    assert len(each.objects) > 20
    for obj in each.objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{each.name}: {obj['kind']}/{obj['metadata']['name']}: {error}")


def test_checkov_finds_nothing_beyond_the_justified_skips(rendered: dict[str, Rendered]) -> None:
    assert CHECKOV.exists(), "checkov's tool venv is missing: run `make install`"
    files = {str(rendered[name].path): name for name in OVERLAYS}
    # One run over both overlays (checkov's start-up is most of its time).
    result = subprocess.run(
        [
            str(CHECKOV),
            "--framework",
            "kubernetes",
            *(arg for path in files for arg in ("-f", path)),
            "--skip-check",
            ",".join(CHECKOV_SKIPS),
            "--skip-download",
            "--quiet",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        # No mappings download: this runs offline.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, result.stderr[-2000:]
    assert summary["resource_count"] >= sum(len(r.objects) for r in rendered.values()) / 2
    failures = [
        f"{files[check['file_abs_path']]}: {check['check_id']} {check['resource']}"
        for check in report["results"]["failed_checks"]
        if not (files[check["file_abs_path"]] == "dev" and check["check_id"] in CHECKOV_DEV_SKIPS)
    ]
    assert failures == []


def test_every_process_probes_grpc_health_on_its_grpc_port(each: Rendered) -> None:
    for workload in servers(each):
        (container,) = pod(workload)["spec"]["containers"]
        grpc_ports = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        assert len(grpc_ports) == 1, workload["metadata"]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_ports[0], (
                f"{workload['metadata']['name']}: {probe}"
            )
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["GRPC_PORT"] == str(grpc_ports[0])


def test_every_container_has_requests_limits_and_probes(each: Rendered) -> None:
    for workload in workloads(each):
        for container in pod(workload)["spec"]["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, name
            if workload["kind"] not in BATCH:
                assert "readinessProbe" in container and "livenessProbe" in container, name


def test_every_pod_runs_locked_down(each: Rendered) -> None:
    for workload in workloads(each):
        spec = pod(workload)["spec"]
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] >= 10000, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["privileged"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["seccompProfile"]["type"] == "RuntimeDefault", name


def test_termination_grace_covers_the_sigterm_drain(each: Rendered) -> None:
    (config,) = (
        each.of_kind("ConfigMap")
        if each.name == "base"
        else [
            c
            for c in each.of_kind("ConfigMap")
            if c["metadata"]["name"].startswith("audiences-config")
        ]
    )
    drain = float(config["data"]["SHUTDOWN_GRACE_SECONDS"])
    for workload in servers(each):
        spec = pod(workload)["spec"]
        (container,) = spec["containers"]
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The kubelet kills at the grace: the endpoint removal pause plus the drain must
        # end before it, with room for the workers to stop and connections to close.
        assert spec["terminationGracePeriodSeconds"] >= pause + drain + 5, workload


def _port_named(rule_ports: list[dict[str, Any]], port: dict[str, Any]) -> bool:
    return any(p.get("port") in (port["name"], port["containerPort"]) for p in rule_ports)


def test_every_container_port_is_in_its_service_and_network_policy(each: Rendered) -> None:
    services = each.of_kind("Service")
    policies = each.of_kind("NetworkPolicy")
    for workload in workloads(each):
        if workload["kind"] in BATCH:
            continue
        labels = pod(workload)["metadata"]["labels"]
        (service,) = [s for s in services if selects(s["spec"]["selector"], labels)]
        admitting = [
            p
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"]
            and p["spec"]["podSelector"]
            and selects(p["spec"]["podSelector"]["matchLabels"], labels)
        ]
        for container in pod(workload)["spec"]["containers"]:
            for port in container["ports"]:
                where = f"{workload['metadata']['name']}:{port['name']}"
                assert any(
                    s["port"] == port["containerPort"]
                    and s["targetPort"] in (port["name"], port["containerPort"])
                    for s in service["spec"]["ports"]
                ), f"{where} not exposed by Service {service['metadata']['name']}"
                assert any(
                    _port_named(rule.get("ports", []), port)
                    for policy in admitting
                    for rule in policy["spec"].get("ingress", [])
                ), f"{where} admitted by no NetworkPolicy"
        # And nothing in the Service points at a port the pod does not open.
        opened = {
            key
            for c in pod(workload)["spec"]["containers"]
            for p in c["ports"]
            for key in (p["name"], p["containerPort"])
        }
        for service_port in service["spec"]["ports"]:
            assert service_port["targetPort"] in opened, service_port


def test_everything_is_denied_unless_a_policy_admits_it(overlay: Rendered) -> None:
    deny = overlay.named("NetworkPolicy", "default-deny")
    assert deny is not None
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_every_process_has_a_disruption_budget_and_scales_by_a_metric(each: Rendered) -> None:
    budgets = each.of_kind("PodDisruptionBudget")
    autoscalers = {
        (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]): h
        for h in each.of_kind("HorizontalPodAutoscaler")
    }
    for workload in servers(each):
        labels = pod(workload)["metadata"]["labels"]
        name = workload["metadata"]["name"]
        assert any(selects(b["spec"]["selector"]["matchLabels"], labels) for b in budgets), name
        if workload["kind"] == "StatefulSet":
            # A pod per stream shard (prod): scaled by adding shards, not by an HPA.
            assert autoscalers.get(("StatefulSet", name)) is None
            continue
        assert ("Deployment", name) in autoscalers, name


def test_stream_workers_scale_on_consumer_group_lag(each: Rendered) -> None:
    autoscaler = each.named("HorizontalPodAutoscaler", "segmentation-realtime")
    if each.name == "prod":
        assert autoscaler is None  # sharded: see the StatefulSet test below
        return
    assert autoscaler is not None
    external = [m["external"] for m in autoscaler["spec"]["metrics"] if m["type"] == "External"]
    assert [m["metric"]["name"] for m in external] == ["audiences_stream_lag"]
    assert external[0]["metric"]["selector"]["matchLabels"] == {"group": "segmentation-realtime"}


def test_prod_gives_each_stream_shard_exactly_one_realtime_owner(
    rendered: dict[str, Rendered],
) -> None:
    prod = rendered["prod"]
    assert prod.named("Deployment", "segmentation-realtime") is None
    workers = prod.named("StatefulSet", "segmentation-realtime")
    assert workers is not None
    (config,) = [
        c for c in prod.of_kind("ConfigMap") if c["metadata"]["name"].startswith("audiences-config")
    ]
    assert workers["spec"]["replicas"] == int(config["data"]["INGEST_SHARDS"])
    (container,) = pod(workers)["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["REALTIME_STREAMS"]["value"] == "stream:events:$(POD_INDEX)"
    assert (
        env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    names = list(env)
    # $(VAR) expands only variables defined earlier in the list.
    assert names.index("POD_INDEX") < names.index("REALTIME_STREAMS")
    assert names.index("POD_NAME") < names.index("REALTIME_CONSUMER")


def test_prod_ships_no_secret_values(rendered: dict[str, Rendered]) -> None:
    assert rendered["prod"].of_kind("Secret") == []


def test_migrations_job_runs_the_migrate_command(overlay: Rendered) -> None:
    job = overlay.named("Job", "audiences-migrate")
    assert job is not None
    (container,) = pod(job)["spec"]["containers"]
    assert container["args"] == ["services.shared.cli", "migrate"]
    assert pod(job)["spec"]["restartPolicy"] == "Never"


# --- every environment variable the code reads is set --------------------------------

# Reads of the environment, by the shapes the code uses: os.environ.get("X"),
# env.get("X"), env["X"], "X" in env, and the settings modules' _float("X") / _env_int.
_READS = [
    re.compile(r"""(?:environ|env)\.get\(\s*"([A-Z][A-Z0-9_]+)\""""),
    re.compile(r"""(?:environ|env)\[\s*"([A-Z][A-Z0-9_]+)"\s*\]"""),
    re.compile(r""""([A-Z][A-Z0-9_]+)"\s+in\s+(?:os\.environ|env)\b"""),
    re.compile(r"""\b_(?:float|env_int|int)\(\s*"([A-Z][A-Z0-9_]+)\""""),
    re.compile(r"""os\.getenv\(\s*"([A-Z][A-Z0-9_]+)\""""),
]
SERVICES = ROOT / "services"
# Subpackages with their own command that the parent's process also runs: the profile
# service trains (RECOMMENDATIONS_TRAINING=service) with the code of its training job.
SERVED_BY_PARENT = {"services.profile.recommendations"}
# Never deployed: `make run` only.
NOT_DEPLOYED = {SERVICES / "dev_runner.py"}


def environment_reads(files: list[Path]) -> set[str]:
    """Every environment variable these files read."""
    found: set[str] = set()
    for path in files:
        if path in NOT_DEPLOYED:
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in _READS:
            found.update(pattern.findall(text))
        if path == SERVICES / "shared" / "config.py":
            # Settings.from_env reads <SERVICE>_ADDR for every service by an f-string.
            found.update(f"{name.upper()}_ADDR" for name in DEFAULT_PORTS)
    return found


def package_files(module: str) -> list[Path]:
    """The source files of the process started as `python -m module`: services/shared
    and its own package (the realtime worker's subpackage apart from segmentation's)."""
    shared = sorted((SERVICES / "shared").rglob("*.py"))
    if module == "services.shared.cli":
        return shared
    own = SERVICES.joinpath(*module.split(".")[1:])
    files = sorted(own.rglob("*.py"))
    # A subpackage with its own __main__ is another process (the realtime worker), left
    # out, unless this process runs its code too (SERVED_BY_PARENT).
    nested = [
        p
        for p in own.iterdir()
        if p.is_dir()
        and (p / "__main__.py").exists()
        and ".".join(p.relative_to(SERVICES.parent).parts) not in SERVED_BY_PARENT
    ]
    files = [f for f in files if not any(n in f.parents for n in nested)]
    return shared + files


def test_the_environment_scan_sees_the_known_reads() -> None:
    shared = environment_reads(package_files("services.shared.cli"))
    assert {"DATABASE_URL", "REDIS_URL", "SHUTDOWN_GRACE_SECONDS", "SYNC_ADDR"} <= shared
    assert "REALTIME_BLOCK_MS" in environment_reads(package_files("services.segmentation.realtime"))
    segmentation = environment_reads(package_files("services.segmentation"))
    assert "SEGMENTATION_RECONCILE_SECONDS" in segmentation
    assert "REALTIME_BLOCK_MS" not in segmentation
    assert {"SYNC_MAX_ATTEMPTS", "SYNC_SECRET_KEY"} <= environment_reads(
        package_files("services.sync")
    )
    # The profile service reads the training settings its job's package holds.
    training = {"RECOMMENDATIONS_TRAINING", "RECOMMENDATIONS_RETRAIN_EVERY_SECONDS"}
    assert training <= environment_reads(package_files("services.profile"))
    assert training <= environment_reads(package_files("services.profile.recommendations"))


def test_every_environment_variable_the_code_reads_is_set(
    each: Rendered, rendered: dict[str, Rendered]
) -> None:
    def data(kind: str, name: str) -> set[str]:
        found = [
            o
            for o in each.of_kind(kind)
            # configMapGenerator/secretGenerator add a content hash to the name.
            if o["metadata"]["name"] == name or o["metadata"]["name"].startswith(f"{name}-")
        ]
        if not found and kind == "Secret" and each.name == "prod":
            # prod's Secrets are made outside the overlay, with the template's keys.
            found = [o for o in rendered["base"].of_kind(kind) if o["metadata"]["name"] == name]
        assert found, f"{each.name}: {kind} {name} is referenced but not rendered"
        return set(found[0].get("data", {})) | set(found[0].get("stringData", {}))

    for workload in audiences_workloads(each):
        (container,) = pod(workload)["spec"]["containers"]
        module = container["args"][0]
        available = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                available |= data("ConfigMap", source["configMapRef"]["name"])
            else:
                available |= data("Secret", source["secretRef"]["name"])
        missing = environment_reads(package_files(module)) - available
        # Read only when REDIS_URL is unset (the embedded store); every pod sets REDIS_URL.
        missing.discard("EMBEDDED_REDIS_ADDR")
        if module != "services.ingest":
            # Only AdminService.CreateWorkspace checks it; AdminService is served by ingest.
            missing.discard("OPERATOR_TOKEN")
        if workload["kind"] in BATCH:
            missing.discard("GRPC_PORT")  # the migrate and training commands open no port
        assert missing == set(), f"{each.name}: {workload['metadata']['name']} lacks {missing}"
