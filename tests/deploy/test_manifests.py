"""Deployment files are checked by real validators, and agree with Settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import compose
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
CORE_MANIFESTS = [  # KEDA's ScaledObject: a CRD, not validated here
    "namespace.yaml",
    "configmap.yaml",
    "serviceaccounts.yaml",
    "worker-deployment.yaml",
    "flower.yaml",
    "redis.yaml",
    "api.yaml",
    "network-policy.yaml",
]
REDIS_SECRET = {"REDIS_PASSWORD": "0123456789abcdef0123456789abcdef"}  # what `openssl rand -hex` gives


def test_kubernetes_manifests_validate_strictly() -> None:
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("kubernetes-validate")),
            "--strict",
            *(str(K8S / m) for m in CORE_MANIFESTS),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_file_validates() -> None:
    binary = Path(compose.__file__).with_name("docker-compose")  # the wrapper script exits 0 on errors
    run = subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("manifest", ["worker-deployment.yaml", "api.yaml"])
def test_configmap_is_a_valid_production_configuration(manifest: str) -> None:
    # With the Deployment's own values (VAULT_ADDR: plain http to an in-cluster Vault; REDIS_URL
    # with the password from its Secret).
    env = _pod_env(manifest, {**REDIS_SECRET, "IMAGEGEN_API_TOKEN_ACME": "k8s-secret-token-0123456789"})
    assert (
        "VAULT_ADDR" in env
        and env["REDIS_URL"] == f"redis://:{REDIS_SECRET['REDIS_PASSWORD']}@redis.imagegen.svc:6379/0"
    )
    # Settings reads the environment; validate the ConfigMap exactly as a pod would see it.
    proc = subprocess.run(
        [sys.executable, "-c", "from contract.settings import Settings; s = Settings(); print(s.environment)"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "production", proc.stderr


def test_grace_period_outlives_the_hard_time_limit() -> None:
    deployment = next(yaml.safe_load_all((K8S / "worker-deployment.yaml").read_text()))
    data = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > int(
        data["IMAGEGEN_TASK_TIME_LIMIT_S"]
    )


def test_redis_keeps_its_data_across_restarts() -> None:
    """AOF (fsync every second) on a persistent volume, in Kubernetes and in compose."""
    service, statefulset = yaml.safe_load_all((K8S / "redis.yaml").read_text())
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in statefulset["spec"]["template"]["spec"][
        "containers"
    ][0]["volumeMounts"]
    # Every Deployment's REDIS_URL names this Service.
    for manifest in ("worker-deployment.yaml", "api.yaml", "flower.yaml"):
        url = _pod_env(manifest, REDIS_SECRET)["REDIS_URL"]
        assert url.split("@", 1)[1].startswith(f"{service['metadata']['name']}."), manifest

    redis = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def _pod_env(manifest: str, secrets: dict[str, str]) -> dict[str, str]:
    """A Deployment's container environment as Kubernetes builds it: the ConfigMap, then its own
    ``env`` in order (a secretKeyRef read from ``secrets``, keyed by the variable's name; a
    ``$(NAME)`` in a value replaced by a variable defined before it)."""
    deployment = next(d for d in yaml.safe_load_all((K8S / manifest).read_text()) if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {k: str(v) for k, v in yaml.safe_load((K8S / "configmap.yaml").read_text())["data"].items()}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), str(item["value"])
            )
        elif item["name"] in secrets:
            env[item["name"]] = secrets[item["name"]]
    return env


def _api_pod_env(secrets: dict[str, str]) -> dict[str, str]:
    return _pod_env("api.yaml", {**REDIS_SECRET, **secrets})


def test_the_api_pod_starts_in_production_only_with_its_tokens() -> None:
    probe = "from api.tenants import Authenticator; from contract.settings import Settings; Authenticator(Settings())"
    base = {"PATH": "/usr/bin:/bin"}
    started = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**base, **_api_pod_env({"IMAGEGEN_API_TOKEN_ACME": "k8s-secret-token-0123456789"})},
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    missing = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env={**base, **_api_pod_env({})}, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "env:IMAGEGEN_API_TOKEN_ACME" in missing.stderr


def test_the_api_probes_and_ports_match_the_app() -> None:
    from api.app import create_app
    from contract.settings import Settings

    deployment, service, _ = yaml.safe_load_all((K8S / "api.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["imagegen", "serve"]
    [port] = container["ports"]
    assert int(command[command.index("--port") + 1]) == port["containerPort"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    routes = {getattr(route, "path", None) for route in create_app(Settings(environment="development")).routes}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes

    compose_api = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]
    assert compose_api["command"] == command and "/readyz" in " ".join(compose_api["healthcheck"]["test"])


def _pod_templates() -> dict[str, dict[str, Any]]:
    """Each workload's pod template (its metadata and spec) by its file."""
    templates = {}
    for name in ("worker-deployment.yaml", "api.yaml", "flower.yaml", "redis.yaml"):
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document and document["kind"] in ("Deployment", "StatefulSet"):
                templates[name] = document["spec"]["template"]
    return templates


def _pod_specs() -> dict[str, dict[str, Any]]:
    """Each workload's pod spec by its file."""
    return {name: template["spec"] for name, template in _pod_templates().items()}


def test_every_container_is_locked_down_and_keeps_secrets_out_of_argv() -> None:
    for name, spec in _pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"], name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"], name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert container["command" if "command" in container else "args"][0] != "sh", name  # no $SECRET in argv
            assert "resources" in container and "livenessProbe" in container, name


def test_our_pods_get_no_service_link_variables() -> None:
    # Kubernetes would set IMAGEGEN_<SERVICE>_PORT=tcp://... for every Service named imagegen-*:
    # a Service named imagegen-metrics would set IMAGEGEN_METRICS_PORT, a setting.
    specs = _pod_specs()
    for name in ("worker-deployment.yaml", "api.yaml", "flower.yaml"):
        assert specs[name]["enableServiceLinks"] is False, name


def test_pods_run_as_service_accounts_that_exist_and_can_log_in_to_vault() -> None:
    accounts = {d["metadata"]["name"] for d in yaml.safe_load_all((K8S / "serviceaccounts.yaml").read_text())}
    for name in ("worker-deployment.yaml", "api.yaml"):
        spec = _pod_specs()[name]
        assert spec["serviceAccountName"] in accounts, name
        env = {item["name"]: item.get("value") for item in spec["containers"][0]["env"]}
        # Without a role (or a token) no vault: reference resolves (contract/secret_reader.py).
        assert env["VAULT_ADDR"] and env["VAULT_K8S_ROLE"] == spec["serviceAccountName"], name
    data = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert (
        data["IMAGEGEN_ALLOWED_SECRET_REFS"].startswith("vault:") and "{tenant}" in data["IMAGEGEN_TENANT_SECRET_REFS"]
    )


def test_redis_refuses_writes_before_the_kernel_kills_it() -> None:
    spec = _pod_specs()["redis.yaml"]
    [container] = spec["containers"]
    args = container["args"]
    maxmemory = args[args.index("--maxmemory") + 1]
    assert maxmemory.endswith("mb") and int(maxmemory[:-2]) < 1024 * 0.8  # limit 1Gi: room for the AOF fork
    assert container["resources"]["limits"]["memory"] == "1Gi"


def test_a_redis_outage_of_minutes_does_not_restart_the_workers() -> None:
    """Heartbeats stop while the broker is down, and the worker rides that out."""
    probe = _pod_specs()["worker-deployment.yaml"]["containers"][0]["livenessProbe"]["exec"]["command"][-1]
    assert int(probe.rsplit("-lt", 1)[1].strip()) >= 600


def test_the_image_has_a_writable_images_directory() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "mkdir -p /data/images && chown 10001 /data/images" in dockerfile and "USER 10001" in dockerfile
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert (
        "images:/data/images" in services["worker"]["volumes"] and "images:/data/images" in services["api"]["volumes"]
    )


def test_the_build_context_is_what_the_image_copies() -> None:
    """Without .dockerignore, docker sends the whole checkout (a virtualenv, npm tools, test
    output) to the daemon on every build, and a COPY of a package takes its __pycache__ along."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    ignored.discard("")
    copied = [
        word
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for word in line.split()[1:-1]
    ]
    assert copied and not any(path in ignored for path in copied), copied
    assert {".venv", ".tools", "var", "tests", "devtools", "**/__pycache__"} <= ignored
    assert "rm -rf build ./*.egg-info" in (ROOT / "Dockerfile").read_text()  # pip's in-tree build leftovers


def _objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_object_is_in_the_namespace_the_addresses_name() -> None:
    """REDIS_URL, KEDA's address and Vault's bound namespace say ``imagegen``: an object applied
    into another namespace would find no Redis and no Vault login."""
    objects = _objects()
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert namespace == "imagegen"
    placed = {(o["kind"], o["metadata"]["name"]): o["metadata"].get("namespace") for o in objects}
    assert {key: ns for key, ns in placed.items() if key[0] != "Namespace" and ns != namespace} == {}
    text = "\n".join(path.read_text() for path in K8S.glob("*.yaml"))
    assert {m.split(".")[1] for m in re.findall(r"redis\.[a-z0-9-]+\.svc", text)} == {namespace}
    assert f"bound_service_account_namespaces={namespace}" in text


def test_keda_owns_the_worker_count_and_a_drain_can_evict_a_worker() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _objects()}
    scaled = objects[("ScaledObject", "imagegen-worker")]["spec"]
    deployment = objects[("Deployment", scaled["scaleTargetRef"]["name"])]
    assert "replicas" not in deployment["spec"]  # a re-apply would reset KEDA's count
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 600  # what cooldownPeriod did not do
    budget = objects[("PodDisruptionBudget", "imagegen-worker")]["spec"]
    # At KEDA's minimum, the budget must still allow one eviction.
    allowed = (
        budget["maxUnavailable"] if "maxUnavailable" in budget else scaled["minReplicaCount"] - budget["minAvailable"]
    )
    assert allowed >= 1


def test_compose_images_are_shown_by_the_playground() -> None:
    """The worker's images are on the volume the API serves at /files (development): a record's
    ``url`` must point there, or the Playground (which shows only http(s) URLs) shows no image."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    worker_env, api = services["worker"]["environment"], services["api"]
    root = worker_env["IMAGEGEN_STORAGE_URL"]
    assert "://" not in root
    assert f"images:{root}" in services["worker"]["volumes"] and f"images:{root}" in api["volumes"]
    [published] = [p for p in api["ports"] if p.endswith(":8000")]
    host, port = published.rsplit(":", 2)[:2]
    base = worker_env.get("IMAGEGEN_STORAGE_PUBLIC_BASE_URL", "")
    served = rf"http://{re.escape(host)}:{port}/files"
    assert re.fullmatch(rf"(\$\{{IMAGEGEN_STORAGE_PUBLIC_BASE_URL:-)?{served}\}}?", base), base


def test_every_worker_pool_can_be_installed_as_documented() -> None:
    """IMAGEGEN_WORKER_POOL accepts gevent, whose package a production install (and the image)
    lacks: the worker would die at start with ModuleNotFoundError. It needs an extra of its own,
    named in the README's settings table."""
    import tomllib
    from typing import get_args

    from contract.settings import Settings

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = {re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    readme = (ROOT / "README.md").read_text()
    [row] = [line for line in readme.splitlines() if line.startswith("| `IMAGEGEN_WORKER_POOL` |")]
    for pool in get_args(Settings.model_fields["worker_pool"].annotation):
        if pool == "gevent" and "gevent" not in installed:
            assert any(dep.startswith("gevent") for dep in project["optional-dependencies"].get("gevent", [])), pool
            assert "[gevent]" in row, row


def test_redis_asks_for_a_password_that_every_client_and_keda_has() -> None:
    """Any pod that reached Redis could read every tenant's results and send tasks past the API's
    tenancy: Redis loads ``requirepass`` from the Secret (a file, not its argv), and every
    client gets the password from the same Secret."""
    spec = _pod_specs()["redis.yaml"]
    [container] = spec["containers"]
    config = container["args"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [volume] = [v for v in spec["volumes"] if config.startswith(mounts[v["name"]] + "/")]
    assert volume["secret"]["secretName"] == "imagegen-redis"
    assert volume["secret"]["items"] == [{"key": "redis-auth.conf", "path": config.rsplit("/", 1)[1]}]
    assert volume["secret"]["defaultMode"] & 0o040 and spec["securityContext"]["fsGroup"] == 999  # Redis reads it
    probe_auth = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}["REDISCLI_AUTH"]
    assert probe_auth == {"name": "imagegen-redis", "key": "password"}
    assert "redis-cli" in container["readinessProbe"]["exec"]["command"]

    assert "REDIS_URL" not in yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    for manifest in ("worker-deployment.yaml", "api.yaml", "flower.yaml"):
        [client] = _pod_specs()[manifest]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in client["env"] if "valueFrom" in e}
        assert refs["REDIS_PASSWORD"] == {"name": "imagegen-redis", "key": "password"}, manifest
        assert _pod_env(manifest, REDIS_SECRET)["REDIS_URL"].startswith(f"redis://:{REDIS_SECRET['REDIS_PASSWORD']}@")

    keda = {(o["kind"], o["metadata"]["name"]): o for o in _objects()}
    [trigger] = keda[("ScaledObject", "imagegen-worker")]["spec"]["triggers"]
    authentication = keda[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    assert authentication["secretTargetRef"] == [{"parameter": "password", "name": "imagegen-redis", "key": "password"}]


def test_only_the_services_pods_and_keda_reach_redis() -> None:
    objects = _objects()
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    redis_labels = _pod_specs_labels()["redis.yaml"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    pods, keda = rule["from"]
    assert keda["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}

    def admitted(labels: dict[str, str]) -> bool:
        selector = pods["podSelector"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        return all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"])

    by_file = _pod_specs_labels()
    assert {name for name, labels in by_file.items() if admitted(labels)} == {
        "worker-deployment.yaml",
        "api.yaml",
        "flower.yaml",
    }
    assert not admitted({"app.kubernetes.io/name": "imagegen", "app.kubernetes.io/component": "playground"})


def _pod_specs_labels() -> dict[str, dict[str, str]]:
    """Each workload's pod labels by its file."""
    return {name: template["metadata"]["labels"] for name, template in _pod_templates().items()}


def test_the_shipped_quota_covers_every_gemini_model_the_catalog_offers() -> None:
    """A model without a quota goes unthrottled (worker/rate_limit.py): with KEDA at 20 pods of
    256 slots, its calls would hit the project's shared quota as a storm of 429s."""
    from contract.catalog import load_catalog
    from contract.rate_limits import parse_rate_limits

    catalog = load_catalog()
    offered = {e.model_id for e in (catalog.models | catalog.text_models).values() if e.provider == "gemini"}
    data = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert offered and offered <= set(parse_rate_limits(data["IMAGEGEN_RATE_LIMITS"])), offered
