"""The Helm chart, rendered by the real helm and checked against Kubernetes'
schemas and the bridge's own config model."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from bridge.config import BridgeConfig, load_config
from deploy.helpers import (
    CHART,
    DASHBOARD,
    FULL_VALUES,
    NAMESPACE,
    ROOT,
    WORKLOAD_KINDS,
    Manifest,
    bridge_container,
    config_map,
    helm_template_args,
    kinds,
    only,
    render,
    render_error,
    run,
    workload,
)

# --- helm lint and the objects rendered ---------------------------------------


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
@pytest.mark.parametrize("values", [[], [FULL_VALUES]], ids=["defaults", "full-values"])
def test_helm_lint_is_clean(helm: Path, values: list[Path], kind: str) -> None:
    args: list[str | Path] = [helm, "lint", "--strict", CHART, "--set", f"workload.kind={kind}"]
    for path in values:
        args += ["--values", path]
    run(args)


def test_defaults_render_the_minimal_set(default_manifests: list[Manifest]) -> None:
    # No Secret: no API key given (NOTES.txt says so); no CRD objects: off by default.
    assert kinds(default_manifests) == [
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    assert only(default_manifests, "StatefulSet")["spec"]["replicas"] == 1


def test_full_values_render_every_option(full_manifests: list[Manifest]) -> None:
    # existingSecret: the chart creates no Secret of its own.
    assert kinds(full_manifests) == [
        "ConfigMap",
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ]


# --- the workload: a StatefulSet, or a Deployment --------------------------------

INSTANCE_ID_ENV = {
    "name": "XPANDER_BRIDGE_COORDINATION__INSTANCE_ID",
    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
}


def _instance_id_env(manifests: list[Manifest]) -> dict[str, Any]:
    env = {e["name"]: e for e in bridge_container(manifests)["env"]}
    found: dict[str, Any] = env["XPANDER_BRIDGE_COORDINATION__INSTANCE_ID"]
    return found


def test_default_workload_is_a_stateful_set(default_manifests: list[Manifest]) -> None:
    # Stable pod names (rel-xpander-bridge-0, ...): each slot keeps its
    # instance id, so its Kafka transactional.id, across restarts.
    assert "Deployment" not in kinds(default_manifests)
    stateful_set = only(default_manifests, "StatefulSet")
    spec = stateful_set["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert spec["serviceName"] == only(default_manifests, "Service")["metadata"]["name"]
    assert "strategy" not in spec
    assert "volumeClaimTemplates" not in spec  # stateless: checkpoints are in Kafka
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert _instance_id_env(default_manifests) == INSTANCE_ID_ENV


def test_deployment_kind_renders_a_deployment(helm: Path) -> None:
    manifests = render(helm, set_values=["workload.kind=Deployment", "replicas=3"])
    assert "StatefulSet" not in kinds(manifests)
    spec = only(manifests, "Deployment")["spec"]
    assert spec["replicas"] == 3
    # A new pod is ready (it holds its assignment) before an old one goes, so
    # the group never has fewer members than replicas during a rollout.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    for stateful_set_only in ("serviceName", "podManagementPolicy", "updateStrategy"):
        assert stateful_set_only not in spec
    assert _instance_id_env(manifests) == INSTANCE_ID_ENV


def test_both_kinds_run_the_same_pods(helm: Path) -> None:
    rendered = {
        kind: workload(render(helm, [FULL_VALUES], [f"workload.kind={kind}"]))
        for kind in WORKLOAD_KINDS
    }
    assert [w["kind"] for w in rendered.values()] == list(WORKLOAD_KINDS)
    stateful_set, deployment = (w["spec"] for w in rendered.values())
    assert stateful_set["template"] == deployment["template"]
    assert stateful_set["selector"] == deployment["selector"]
    assert stateful_set["replicas"] == deployment["replicas"] == 2
    assert rendered["StatefulSet"]["metadata"] == rendered["Deployment"]["metadata"]


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_selectors_match_the_pods_of_either_kind(helm: Path, kind: str) -> None:
    manifests = render(helm, [FULL_VALUES], [f"workload.kind={kind}"])
    pods = workload(manifests)
    assert pods["kind"] == kind
    pod_labels = pods["spec"]["template"]["metadata"]["labels"].items()
    selectors = {
        "workload": pods["spec"]["selector"]["matchLabels"],
        "Service": only(manifests, "Service")["spec"]["selector"],
        "PodDisruptionBudget": only(manifests, "PodDisruptionBudget")["spec"]["selector"][
            "matchLabels"
        ],
        "NetworkPolicy": only(manifests, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for owner, selector in selectors.items():
        assert selector, owner
        assert selector.items() <= pod_labels, owner
    # The ServiceMonitor selects the Service, which selects the pods.
    monitor = only(manifests, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= only(manifests, "Service")["metadata"]["labels"].items()


@pytest.mark.parametrize("kind", ["DaemonSet", "statefulset", ""])
def test_values_schema_refuses_an_unknown_workload_kind(helm: Path, kind: str) -> None:
    error = render_error(helm, set_values=[f"workload.kind={kind}"])
    assert "schema" in error
    assert "workload.kind" in error
    assert '"StatefulSet", "Deployment"' in error


def test_template_refuses_an_unknown_kind_without_the_schema(helm: Path) -> None:
    # helm --skip-schema-validation: the template still refuses to guess.
    args: list[str | Path] = [helm, *helm_template_args(set_values=["workload.kind=DaemonSet"])]
    proc = run([*args, "--skip-schema-validation"], check=False)
    assert proc.returncode != 0
    assert 'workload.kind must be StatefulSet or Deployment, not "DaemonSet"' in proc.stderr


# --- Kubernetes schemas ---------------------------------------------------------

#: kubernetes-validate ships the schemas of Kubernetes' own kinds only (in the
#: package: it works offline). For any other kind it raises SchemaNotFoundError,
#: which its CLI prints as a WARN and exits 0 on: it would silently pass a CRD.
#: So CRD objects are skipped here, by name, and checked structurally below
#: (test_service_monitor_scrapes_the_service, tests in test_alerts.py).
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ["1.25.0", all_versions()[-1]]


def _rendered_sets(helm: Path) -> dict[str, list[Manifest]]:
    return {
        "defaults": render(helm),
        "three-replicas": render(helm, set_values=["replicas=3"]),
        "deployment": render(helm, set_values=["workload.kind=Deployment", "replicas=3"]),
        "full-values": render(helm, [FULL_VALUES]),
        "full-values-deployment": render(helm, [FULL_VALUES], ["workload.kind=Deployment"]),
        "chart-secret": render(
            helm,
            set_values=[
                "secrets.apiKey=k",
                "secrets.kafkaSaslPassword=p",
                "config.kafka.security_protocol=SASL_SSL",
                "config.kafka.sasl_mechanism=PLAIN",
            ],
        ),
    }


def _no_network(*_: object) -> None:
    raise AssertionError("kubernetes-validate tried to reach the network")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(
    helm: Path, kube_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: set[str] = set()
    rendered = _rendered_sets(helm)
    # The schemas ship inside the package: validation must work offline.
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    for label, manifests in rendered.items():
        for manifest in manifests:
            key = (manifest["apiVersion"], manifest["kind"])
            if key in CRD_KINDS:
                continue
            where = f"{label}: {manifest['kind']}/{manifest['metadata']['name']}"
            try:
                # strict: the -strict schemas refuse unknown fields (a typo'd key).
                kubernetes_validate.validate(manifest, kube_version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{where} against Kubernetes {kube_version}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{where}: {exc.message} (a new CRD kind? add it to CRD_KINDS)")
            checked.add(manifest["kind"])
    assert checked >= {
        "StatefulSet",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


def test_crd_kinds_really_have_no_bundled_schema() -> None:
    # If kubernetes-validate ever ships these schemas, stop skipping them.
    for api_version, kind in CRD_KINDS:
        stub = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(stub, KUBE_VERSIONS[-1], strict=True)


def test_service_monitor_scrapes_the_service(full_manifests: list[Manifest]) -> None:
    monitor = only(full_manifests, "ServiceMonitor")
    service = only(full_manifests, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"


# --- the config file, as the bridge loads it ------------------------------------------


#: The name the first pod of the StatefulSet gets, as the downward API hands it over.
POD_NAME = "rel-xpander-bridge-0"


def _pod_environment(
    manifests: list[Manifest], secret_values: dict[str, str], pod_name: str = POD_NAME
) -> dict[str, str]:
    """The container's environment: plain values, secret keys and pod fields resolved."""
    secrets = {
        m["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in m["data"].items()}
        for m in manifests
        if m["kind"] == "Secret"
    }
    pod_fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}
    environ: dict[str, str] = {}
    for env in bridge_container(manifests).get("env", []):
        if "value" in env:
            environ[env["name"]] = env["value"]
            continue
        if "fieldRef" in env["valueFrom"]:
            environ[env["name"]] = pod_fields[env["valueFrom"]["fieldRef"]["fieldPath"]]
            continue
        ref = env["valueFrom"]["secretKeyRef"]
        chart_secret = secrets.get(ref["name"])
        environ[env["name"]] = (
            chart_secret[ref["key"]] if chart_secret is not None else secret_values[ref["key"]]
        )
    return environ


def _mounted_config(manifests: list[Manifest], tmp_path: Path) -> Path:
    """Write the ConfigMap where the container mounts it, under tmp_path."""
    container = bridge_container(manifests)
    args = container["args"]
    assert args[0] == "run"
    config_path = Path(args[args.index("--config") + 1])
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert mount["readOnly"] is True
    volume = only_volume(manifests, "config")
    assert volume["configMap"]["name"] == config_map(manifests)["metadata"]["name"]
    key = config_path.relative_to(mount["mountPath"]).as_posix()
    local = tmp_path / key
    local.write_text(config_map(manifests)["data"][key])
    return local


def only_volume(manifests: list[Manifest], name: str) -> dict[str, Any]:
    volumes = workload(manifests)["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == name]
    result: dict[str, Any] = volume
    return result


def test_default_config_loads_and_names_what_is_missing(
    default_manifests: list[Manifest], tmp_path: Path
) -> None:
    path = _mounted_config(default_manifests, tmp_path)
    config = load_config(path, environ=_pod_environment(default_manifests, {}))
    assert config.logging.format == "json"
    missing = " ".join(config.missing_for_run())
    for setting in ("platform.api_key", "platform.organization_id", "discovery.agent_ids"):
        assert setting in missing


def test_full_config_loads_with_nothing_missing(
    full_manifests: list[Manifest], tmp_path: Path
) -> None:
    path = _mounted_config(full_manifests, tmp_path)
    environ = _pod_environment(
        full_manifests, {"xpander-api-key": "key-from-secret", "sasl-password": "pw-from-secret"}
    )
    config = load_config(path, environ=environ)
    assert config.missing_for_run() == []
    assert config.platform.api_key is not None
    assert config.platform.api_key.get_secret_value() == "key-from-secret"
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.get_secret_value() == "pw-from-secret"
    assert config.logging.level == "DEBUG"  # extraEnv reached the bridge
    assert config.coordination.instance_id == POD_NAME  # the downward API did
    # Every value of the full-values file arrived unchanged (numbers included).
    values = yaml.safe_load(FULL_VALUES.read_text())["config"]
    from_env: Any = {
        "platform": {"api_key"},
        "kafka": {"sasl_password"},
        "logging": {"level"},
        "coordination": {"instance_id"},
    }
    expected = BridgeConfig.model_validate(values).model_dump(exclude=from_env)
    assert config.model_dump(exclude=from_env) == expected


def test_chart_secret_feeds_the_bridge(helm: Path, tmp_path: Path) -> None:
    manifests = render(
        helm,
        set_values=[
            "secrets.apiKey=the-key",
            "secrets.kafkaSaslPassword=the-password",
            "config.kafka.security_protocol=SASL_PLAINTEXT",
            "config.kafka.sasl_mechanism=SCRAM-SHA-256",
            "config.platform.organization_id=org",
            "config.discovery.agent_ids={a1}",
        ],
    )
    secret = only(manifests, "Secret")
    assert set(secret["data"]) == {"api-key", "kafka-sasl-password"}
    config = load_config(_mounted_config(manifests, tmp_path), _pod_environment(manifests, {}))
    assert config.missing_for_run() == []
    assert config.platform.api_key is not None
    assert config.platform.api_key.get_secret_value() == "the-key"
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.get_secret_value() == "the-password"


# --- the pod ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["defaults", "full-values"])
def test_pod_wiring(
    which: str, default_manifests: list[Manifest], full_manifests: list[Manifest]
) -> None:
    manifests = default_manifests if which == "defaults" else full_manifests
    values = yaml.safe_load(FULL_VALUES.read_text()) if which == "full-values" else {}
    config = yaml.safe_load(config_map(manifests)["data"]["config.yaml"])
    pod = workload(manifests)["spec"]["template"]["spec"]
    container = bridge_container(manifests)

    [port] = container["ports"]
    assert port["containerPort"] == config["http"]["port"]
    service = only(manifests, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    probes = {
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
        "startupProbe": "/livez",
    }
    for probe, path in probes.items():
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}

    # The kubelet waits longer than the bridge drains before it kills.
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config["pipeline"]["shutdown_timeout_s"]
    if "terminationGracePeriodSeconds" in values:
        assert grace == values["terminationGracePeriodSeconds"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "memory" in container["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False


def test_grace_period_is_derived_from_the_shutdown_timeout(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("config:\n  pipeline:\n    shutdown_timeout_s: 50.5\n")
    manifests = render(helm, [values])
    pod = workload(manifests)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 51 + 15


def test_config_change_rolls_the_pods(helm: Path, default_manifests: list[Manifest]) -> None:
    def checksums(manifests: list[Manifest]) -> dict[str, str]:
        annotations = workload(manifests)["spec"]["template"]["metadata"]["annotations"]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    before = checksums(default_manifests)
    after_config = checksums(render(helm, set_values=["config.logging.level=DEBUG"]))
    after_secret = checksums(render(helm, set_values=["secrets.apiKey=rotated"]))
    assert after_config["checksum/config"] != before["checksum/config"]
    assert after_config["checksum/secret"] == before["checksum/secret"]
    assert after_secret["checksum/secret"] != before["checksum/secret"]


def test_existing_secret_is_referenced_not_created(full_manifests: list[Manifest]) -> None:
    assert "Secret" not in kinds(full_manifests)
    env = {e["name"]: e for e in bridge_container(full_manifests)["env"]}
    api_key = env["XPANDER_API_KEY"]["valueFrom"]["secretKeyRef"]
    sasl = env["XPANDER_BRIDGE_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert api_key == {"name": "xpander-bridge-credentials", "key": "xpander-api-key"}
    assert sasl == {"name": "xpander-bridge-credentials", "key": "sasl-password"}


def test_disruption_budget_selects_the_pods(full_manifests: list[Manifest]) -> None:
    budget = only(full_manifests, "PodDisruptionBudget")["spec"]
    pod_labels = workload(full_manifests)["spec"]["template"]["metadata"]["labels"]
    assert budget["minAvailable"] == 1
    assert "maxUnavailable" not in budget
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


# --- several replicas ------------------------------------------------------------------


def test_three_replicas_share_the_work(helm: Path, tmp_path: Path) -> None:
    manifests = render(
        helm,
        set_values=[
            "replicas=3",
            "config.platform.organization_id=org",
            "config.discovery.agent_ids={a1}",
            "secrets.apiKey=k",
        ],
    )
    pods = only(manifests, "StatefulSet")["spec"]
    assert pods["replicas"] == 3
    # No start order to keep: the three start together.
    assert pods["podManagementPolicy"] == "Parallel"
    # Voluntary evictions one at a time: the other two own every partition.
    budget = only(manifests, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget
    pod_labels = pods["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()

    assert _instance_id_env(manifests) == INSTANCE_ID_ENV

    # The rendered config, as each pod loads it: coordination on, its own name.
    path = _mounted_config(manifests, tmp_path)
    names = ["rel-xpander-bridge-0", "rel-xpander-bridge-1"]
    configs = [load_config(path, environ=_pod_environment(manifests, {}, name)) for name in names]
    for config, name in zip(configs, names, strict=True):
        assert config.missing_for_run() == []
        assert config.coordination.enabled is True
        assert config.coordination.instance_id == name
        assert config.coordination.partitions >= 3
    # The grace period covers the shutdown (stop, final checkpoints, drain).
    grace = pods["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > configs[0].pipeline.shutdown_timeout_s


def test_one_replica_keeps_a_budget_that_lets_drains_through(
    default_manifests: list[Manifest],
) -> None:
    # minAvailable 1 on a single replica would block every node drain.
    budget = only(default_manifests, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget
    env = {e["name"] for e in bridge_container(default_manifests)["env"]}
    assert "XPANDER_BRIDGE_COORDINATION__INSTANCE_ID" in env


def test_replicas_without_streams_need_no_coordination(helm: Path) -> None:
    # Reports alone share their partitions through their own consumer group.
    manifests = render(
        helm,
        set_values=[
            "replicas=3",
            "config.streams.enabled=false",
            "config.coordination.enabled=false",
        ],
    )
    assert workload(manifests)["spec"]["replicas"] == 3


def test_dashboard_config_map_carries_the_dashboard(full_manifests: list[Manifest]) -> None:
    dashboard = only(full_manifests, "ConfigMap", "bridge-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["xpander-bridge.json"]) == json.loads(DASHBOARD.read_text())


# --- values.schema.json and the chart's own checks --------------------------------


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("replicas=-1", "replicas"),
        ("replica=2", "replica"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("service.port=70000", "service.port"),
        ("serviceMonitor.interval=often", "interval"),
        # the bridge's own config model, through the generated definitions
        ("config.kafka.bootstrap_server=k:9092", "bootstrap_server"),
        ("config.kafka.compression_type=brotli", "compression_type"),
        ("config.pipeline.queue_capacity=0", "queue_capacity"),
        ("config.logging.level=TRACE", "level"),
        # secrets are never part of the config file
        ("config.platform.api_key=k", "api_key"),
        ("config.kafka.sasl_password=p", "sasl_password"),
    ],
)
def test_values_schema_refuses(helm: Path, setting: str, complaint: str) -> None:
    error = render_error(helm, set_values=[setting])
    assert "schema" in error
    assert complaint in error


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["terminationGracePeriodSeconds=20"], "must be above config.pipeline.shutdown_timeout_s"),
        (["config.http.enabled=false"], "config.http.enabled must be true"),
        (
            ["config.kafka.security_protocol=SASL_SSL", "config.kafka.sasl_mechanism=PLAIN"],
            "set secrets.kafkaSaslPassword",
        ),
        (
            ["replicas=2", "config.coordination.enabled=false"],
            "every replica would stream every task",
        ),
        (["config.coordination.instance_id=bridge-1"], "sets it to each pod's name"),
        # a StatefulSet's pods carry its name plus a revision hash in a label
        ([f"fullnameOverride={'b' * 53}"], "has 53 characters, above 52"),
    ],
)
def test_chart_refuses_a_broken_release(helm: Path, settings: list[str], complaint: str) -> None:
    assert complaint in render_error(helm, set_values=settings)


def test_values_schema_config_is_generated_from_the_model() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_values_schema", ROOT / "scripts" / "gen_values_schema.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    current = (CHART / "values.schema.json").read_text()
    assert current == generator.dumps(generator.render(json.loads(current))), (
        "values.schema.json is out of date with bridge/config.py: "
        "run .venv/bin/python scripts/gen_values_schema.py"
    )


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


# --- NOTES.txt ------------------------------------------------------------------------

_NOTES_PROBE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-probe
data:
  notes: {{ tpl (.Files.Get "notes-probe.txt") . | quote }}
"""


def _notes(helm: Path, tmp_path: Path, values: list[Path]) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart, symlinks=False)
    (chart / "notes-probe.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-probe.yaml").write_text(_NOTES_PROBE)
    args: list[str | Path] = [
        helm,
        "template",
        "rel",
        chart,
        "--show-only",
        "templates/notes-probe.yaml",
    ]
    for path in values:
        args += ["--values", path]
    notes: str = yaml.safe_load(run(args).stdout)["data"]["notes"]
    return notes


def test_notes_warn_about_missing_settings(helm: Path, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, [])
    assert "WARNING: the bridge will not start" in notes
    for setting in (
        "secrets.existingSecret",
        "config.platform.organization_id",
        "config.discovery.agent_ids",
        "config.kafka.bootstrap_servers",
    ):
        assert setting in notes
    assert "kubectl -n default port-forward service/rel-xpander-bridge 8080" in notes
    assert "kubectl -n default rollout status statefulset/rel-xpander-bridge" in notes


def test_notes_are_quiet_when_everything_is_set(helm: Path, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path, [FULL_VALUES])
    assert "WARNING" not in notes
    assert "PrometheusRule bridge" in notes


def test_notes_say_when_replicas_outnumber_partitions(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("replicas: 6\nconfig:\n  coordination:\n    partitions: 4\n")
    notes = _notes(helm, tmp_path, [values])
    assert "replicas (6) is above config.coordination.partitions (4)" in notes
    assert "2 of them own no partition" in notes
    assert "config.coordination.partitions" not in _notes(helm, tmp_path / "again", [])


def test_notes_name_a_deployment_when_it_is_one(helm: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("workload:\n  kind: Deployment\n")
    notes = _notes(helm, tmp_path, [values])
    assert "kubectl -n default rollout status deployment/rel-xpander-bridge" in notes
    assert "kubectl -n default logs deployment/rel-xpander-bridge -f" in notes
    assert "statefulset/" not in notes
