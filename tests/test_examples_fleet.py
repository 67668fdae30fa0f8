"""The fleet examples fit the bridge (README, Fleet): ``examples/kubernetes/`` (a StatefulSet of N
replicas sharding one readers file), ``examples/compose.fleet.yaml`` and
``examples/readers.example.toml``. Only settings the bridge reads, N in step between the replica
count and ``BRIDGE_SHARD``, and a shard arithmetic that gives every reader exactly one replica.
No cluster needed; PyYAML when present, kubectl when present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from bridge.config import Settings, env_names, load_settings
from bridge.shard import Shard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KUBE = EXAMPLES / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"
SHARD_VALUE = re.compile(r"\$\(POD_INDEX\)/(\d+)")
FLEET_ONLY = {"BRIDGE_READERS_FILE", "BRIDGE_SHARD"}
"""Fleet settings the examples use, whether or not bridge.config reads them yet."""


@pytest.fixture(autouse=True)
def _no_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device ids derived here must not depend on the caller's BRIDGE_ variables."""
    for name in [name for name in os.environ if name.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)


# -- loading ---------------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBE.glob("*.yaml") if path.name != KUSTOMIZATION)


def manifests() -> list[dict[str, Any]]:
    found = [doc for path in manifest_files() for doc in yaml_documents(path)]
    assert all(isinstance(doc, dict) for doc in found)
    return found


def one(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def kustomization() -> dict[str, Any]:
    (doc,) = yaml_documents(KUBE / KUSTOMIZATION)
    assert isinstance(doc, dict)
    return doc


def statefulset() -> dict[str, Any]:
    return one("StatefulSet")


def pod_spec() -> dict[str, Any]:
    spec = statefulset()["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def bridge_container() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    assert isinstance(container, dict)
    return container


def env_list() -> list[dict[str, Any]]:
    env = bridge_container()["env"]
    assert isinstance(env, list)
    return env


def env_of() -> dict[str, dict[str, Any]]:
    entries = env_list()
    by_name = {entry["name"]: entry for entry in entries}
    assert len(by_name) == len(entries), "a variable is given twice"
    return by_name


def shard_count() -> int:
    """N, from BRIDGE_SHARD's value ``$(POD_INDEX)/N``."""
    value = env_of()["BRIDGE_SHARD"]["value"]
    match = SHARD_VALUE.fullmatch(value)
    assert match, f"BRIDGE_SHARD is {value!r}, not $(POD_INDEX)/N"
    return int(match[1])


def mount_path(volume_matches: Callable[[dict[str, Any]], bool]) -> str:
    """Where the container mounts the one pod volume for which ``volume_matches`` holds."""
    (volume,) = [volume for volume in pod_spec()["volumes"] if volume_matches(volume)]
    (mount,) = [m for m in bridge_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount  # a subPath mount never sees an edit of its source
    return str(mount["mountPath"])


def fleet_file(text: str) -> dict[str, Any]:
    doc = tomllib.loads(text)
    readers = doc.get("reader")
    assert isinstance(readers, list), "no [[reader]] table"
    assert readers, "no [[reader]] table"
    return doc


def configmap_fleet() -> dict[str, Any]:
    return fleet_file(one("ConfigMap")["data"]["readers.toml"])


def example_fleet() -> dict[str, Any]:
    return fleet_file((EXAMPLES / "readers.example.toml").read_text())


FLEETS: dict[str, Callable[[], dict[str, Any]]] = {
    "configmap": configmap_fleet,
    "example": example_fleet,
}


def device_id(reader: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The reader's id as the bridge resolves it: its device_id, else derived from its host."""
    merged = {**defaults, **reader}
    if merged.get("device_id"):
        return str(merged["device_id"])
    return load_settings(env_file=None, reader_host=merged["reader_host"]).resolved_device_id()


def fleet_ids(doc: dict[str, Any]) -> list[str]:
    defaults = doc.get("defaults", {})
    return [device_id(reader, defaults) for reader in doc["reader"]]


def served(ids: list[str], count: int) -> list[set[str]]:
    """For each replica 0 .. count-1, the device ids it serves."""
    return [{one for one in ids if Shard(index, count).holds(one)} for index in range(count)]


def compose_services() -> dict[str, Any]:
    (doc,) = yaml_documents(EXAMPLES / "compose.fleet.yaml")
    services = doc["services"]
    assert isinstance(services, dict)
    return services


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):  # the KEY=value form
        environment = dict(item.split("=", 1) for item in environment)
    return {str(name): str(value) for name, value in environment.items()}


def env_names_in(node: object) -> Iterator[str]:
    """Every container env name anywhere in a manifest."""
    if isinstance(node, dict):
        env = node.get("env")
        if isinstance(env, list):
            yield from (str(entry["name"]) for entry in env)
        for value in node.values():
            yield from env_names_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_names_in(value)


# -- the manifests ---------------------------------------------------------------------------------


def test_every_manifest_has_api_version_kind_and_name() -> None:
    files = manifest_files()
    assert files, "no manifest in examples/kubernetes"
    seen: Counter[tuple[str, str]] = Counter()
    for path in files:
        docs = yaml_documents(path)
        assert docs, f"{path.name} holds no manifest"
        for doc in docs:
            assert isinstance(doc, dict), path.name
            for field in ("apiVersion", "kind"):
                assert isinstance(doc.get(field), str), (path.name, field)
                assert doc[field], (path.name, field)
            assert isinstance(doc.get("metadata", {}).get("name"), str), path.name
            seen[doc["kind"], doc["metadata"]["name"]] += 1
    assert max(seen.values()) == 1, "two manifests of the same kind and name"
    kinds = {kind for kind, _ in seen}
    assert {"ConfigMap", "Secret", "StatefulSet", "PodDisruptionBudget", "Service"} <= kinds


def test_kustomization_lists_every_manifest_and_sets_the_image() -> None:
    doc = kustomization()
    assert doc["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert doc["kind"] == "Kustomization"
    resources = doc["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == {path.name for path in manifest_files()}
    (image,) = doc["images"]
    assert image["name"] == bridge_container()["image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_manifest() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60, check=True
    )
    yaml = pytest.importorskip("yaml")
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]
    names = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered)
    assert names == sorted((doc["kind"], doc["metadata"]["name"]) for doc in manifests())
    (sts,) = [doc for doc in rendered if doc["kind"] == "StatefulSet"]
    (image,) = kustomization()["images"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


def test_statefulset_takes_its_shard_from_the_pod_index_and_n_from_its_replicas() -> None:
    sts = statefulset()
    spec = pod_spec()
    # A Service named bridge-... would otherwise inject BRIDGE_..._PORT=tcp://... variables.
    assert spec["enableServiceLinks"] is False
    env = env_of()
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX_LABEL
    names = [entry["name"] for entry in env_list()]
    # $(POD_INDEX) expands only when POD_INDEX is defined earlier in the list.
    assert names.index("POD_INDEX") < names.index("BRIDGE_SHARD")
    count = shard_count()
    assert sts["spec"]["replicas"] == count, "replicas and the N of BRIDGE_SHARD differ"
    for index in range(count):  # what each pod's BRIDGE_SHARD expands to
        expanded = env["BRIDGE_SHARD"]["value"].replace("$(POD_INDEX)", str(index))
        assert Shard.parse(expanded) == Shard(index, count)
    assert "BRIDGE_READER_HOST" not in env  # refused together with BRIDGE_READERS_FILE


def test_statefulset_reads_the_fleet_and_the_credentials_it_mounts() -> None:
    env = env_of()
    configmap = one("ConfigMap")
    readers_dir = mount_path(
        lambda v: v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    assert env["BRIDGE_READERS_FILE"]["value"] == f"{readers_dir}/readers.toml"

    secret = one("Secret")
    keys = set(secret["stringData"])
    username = env["BRIDGE_MQTT_USERNAME"]["valueFrom"]["secretKeyRef"]
    assert username["name"] == secret["metadata"]["name"]
    assert username["key"] in keys
    secret_dir = mount_path(
        lambda v: v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    )
    password_files = [env["BRIDGE_MQTT_PASSWORD_FILE"]["value"]] + [
        reader["mqtt_password_file"]
        for reader in configmap_fleet()["reader"]
        if "mqtt_password_file" in reader
    ]
    for file in password_files:
        path = PurePosixPath(file)
        assert str(path.parent) == secret_dir, file
        assert path.name in keys, file
    assert "BRIDGE_MQTT_PASSWORD" not in env  # the password is a file, never a variable

    (claim,) = statefulset()["spec"]["volumeClaimTemplates"]
    (data,) = [
        m for m in bridge_container()["volumeMounts"] if m["name"] == claim["metadata"]["name"]
    ]
    assert data["mountPath"] == "/data"
    assert env["BRIDGE_SPOOL_PATH"]["value"].startswith("/data/")
    assert env["BRIDGE_MQTT_HOST"]["value"] not in {"localhost", "127.0.0.1", "::1"}


def test_statefulset_probes_reach_the_listener_and_run_as_non_root() -> None:
    env = env_of()
    container = bridge_container()
    assert env["BRIDGE_HTTP_HOST"]["value"] == "0.0.0.0"  # the kubelet probes from outside
    port = int(env["BRIDGE_HTTP_PORT"]["value"])
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == port, probe

    pod_security = pod_spec()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert isinstance(pod_security["runAsUser"], int)
    assert pod_security["runAsUser"] > 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), bound


def test_services_and_budget_select_the_bridge_pods() -> None:
    sts = statefulset()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {entry["name"] for entry in bridge_container()["ports"]}
    services = [doc for doc in manifests() if doc["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        assert {entry["targetPort"] for entry in service["spec"]["ports"]} <= ports
        # Service links are off, and these names would only give SPRINGCORE_BRIDGE_... anyway.
        assert not service["metadata"]["name"].lower().startswith("bridge")
    (headless,) = [s for s in services if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert len(services) >= 2, "a Service for the metrics besides the headless one"

    budget = one("PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


# -- settings --------------------------------------------------------------------------------------


def test_examples_set_only_settings_the_bridge_reads() -> None:
    known = set(env_names()) | FLEET_ONLY
    in_manifests = {name for doc in manifests() for name in env_names_in(doc)}
    in_compose = {
        name for service in compose_services().values() for name in compose_environment(service)
    }
    assert "BRIDGE_SHARD" in in_manifests
    for name in in_manifests | in_compose:
        if name.upper().startswith("BRIDGE_"):
            assert name in known, f"{name} is no setting of the bridge"


@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_fleet_files_list_readers_with_known_keys(fleet: str) -> None:
    doc = FLEETS[fleet]()
    keys = set(Settings.model_fields)
    assert set(doc) <= {"defaults", "reader"}
    assert set(doc.get("defaults", {})) <= keys
    hosts = []
    for index, reader in enumerate(doc["reader"]):
        assert isinstance(reader.get("reader_host"), str), index
        assert reader["reader_host"], index
        assert set(reader) <= keys, (index, set(reader) - keys)
        port = reader.get("reader_port", doc.get("defaults", {}).get("reader_port", 4000))
        hosts.append((reader["reader_host"], port))
    ids = fleet_ids(doc)
    assert len(set(ids)) == len(ids), "two readers with the same device id"
    assert len(set(hosts)) == len(hosts), "two readers at the same host and port"


def test_device_ids_derive_from_hosts_as_documented() -> None:
    doc = configmap_fleet()
    hosts = [reader["reader_host"] for reader in doc["reader"]]
    ids = dict(zip(hosts, fleet_ids(doc), strict=True))
    assert ids["10.20.2.21"] == "10-20-2-21"
    assert ids["rdr-yard-gate.site.example"] == "rdr-yard-gate-site-example"
    assert ids["10.20.3.31"] == "vault"


# -- the shard arithmetic --------------------------------------------------------------------------


def assert_partition(ids: list[str], count: int) -> list[set[str]]:
    shares = served(ids, count)
    owners = Counter(one for share in shares for one in share)
    for one in ids:
        assert owners[one] == 1, f"{one} is served by {owners[one]} of {count} replicas"
    return shares


@pytest.mark.parametrize("fleet", sorted(FLEETS))
def test_every_sample_reader_lands_in_exactly_one_replica(fleet: str) -> None:
    ids = fleet_ids(FLEETS[fleet]())
    for count in sorted({1, 2, shard_count(), shard_count() + 1}):
        assert_partition(ids, count)


@pytest.mark.parametrize(
    "ids",
    [
        [f"10-20-{i // 250}-{i % 250 + 1}" for i in range(1000)],  # ids derived from addresses
        [f"door-{i:04d}" for i in range(1000)],
    ],
    ids=["addresses", "names"],
)
def test_a_thousand_readers_split_fairly(ids: list[str]) -> None:
    for count in sorted({*range(2, 9), shard_count()}):
        shares = assert_partition(ids, count)
        for index, share in enumerate(shares):
            # Between three and five quarters of a fair share (README in examples/kubernetes).
            assert 3 * len(ids) <= 4 * count * len(share) <= 5 * len(ids), (count, index)


def test_the_readme_table_is_the_sample_split() -> None:
    readme = (KUBE / "README.md").read_text()
    rows = re.findall(
        r"^\| `springcore-bridge-(\d+)` \| `(\d+)/(\d+)` \| ([^|]+) \|$", readme, re.M
    )
    count = shard_count()
    assert [(int(pod), int(k), int(n)) for pod, k, n, _ in rows] == [
        (k, k, count) for k in range(count)
    ]
    shares = served(fleet_ids(configmap_fleet()), count)
    for (_, _, _, listed), share in zip(rows, shares, strict=True):
        assert {name.strip() for name in listed.split(",")} == share


# -- docker compose --------------------------------------------------------------------------------


def test_compose_fleet_runs_the_example_file_against_the_simulated_readers() -> None:
    services = compose_services()
    assert set(services) == {"mosquitto", "simulator", "bridge"}
    assert (
        "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in services["mosquitto"]["volumes"]
    )

    bridge = services["bridge"]
    environment = compose_environment(bridge)
    assert "BRIDGE_READER_HOST" not in environment  # refused together with BRIDGE_READERS_FILE
    assert environment["BRIDGE_MQTT_HOST"] == "mosquitto"
    readers_file = PurePosixPath(environment["BRIDGE_READERS_FILE"])
    volumes = [str(volume).split(":") for volume in bridge["volumes"]]
    assert any(parts[1] == "/data" for parts in volumes if len(parts) > 1)
    (source,) = [
        EXAMPLES / parts[0] / readers_file.relative_to(parts[1])
        for parts in volumes
        if parts[0].startswith(".") and readers_file.is_relative_to(parts[1])
    ]
    assert source.resolve() == (EXAMPLES / "readers.example.toml").resolve()

    command = services["simulator"]["command"]
    assert command[0] == "simulate"
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert flags["--host"] == "0.0.0.0"
    first, count = int(flags["--port"]), int(flags["--readers"])
    doc = example_fleet()
    defaults = doc.get("defaults", {})
    simulated = [
        {**defaults, **reader}.get("reader_port", 4000)
        for reader in doc["reader"]
        if {**defaults, **reader}["reader_host"] == "simulator"
    ]
    assert sorted(simulated) == list(range(first, first + count))
