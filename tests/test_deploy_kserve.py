"""The KServe manifests in deploy/kserve/: CRD schema validation and the contract between the files.

Files only: no cluster, no Docker. The schemas are the OpenAPI v3 schemas in KServe's own
CustomResourceDefinitions (shared/protocols/kserve/), checked with `jsonschema`; unknown fields are errors,
as with `kubectl apply --validate=strict`. The container's arguments are checked with the `imgcls`
CLI's own argument parser.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from imgcls.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
KSERVE_CRDS = SHARED / "protocols" / "kserve"
DEPLOY = ROOT / "deploy"
KSERVE = DEPLOY / "kserve"
RUNTIME_FILE = KSERVE / "servingruntime.yaml"
ISVC_FILE = KSERVE / "inferenceservice.yaml"

HTTP_PORT = 8080  # KServe's default HTTP port for a v2 runtime (Triton, MLServer)
GRPC_PORT = 9000
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
# The schemes KServe's storage initializer (or, for pvc://, a volume mount) understands.
STORAGE_SCHEMES = {"pvc", "s3", "gs", "hf", "https", "http", "oci", "hdfs", "webhdfs"}
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # KServe's rule for InferenceService names


# --- loading --------------------------------------------------------------------------------------


def load_manifest(path: Path) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(documents) == 1, f"{path.name}: expected one document, found {len(documents)}"
    return documents[0]


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return load_manifest(RUNTIME_FILE)


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return load_manifest(ISVC_FILE)


@pytest.fixture(scope="module")
def container(runtime: dict[str, Any]) -> dict[str, Any]:
    containers = runtime["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag_values(args: list[str], flag: str) -> list[str]:
    """Every value of `--flag VALUE` or `--flag=VALUE` in a container's args."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            assert i + 1 < len(args), f"{flag} has no value"
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def flag_value(args: list[str], flag: str) -> str:
    values = flag_values(args, flag)
    assert len(values) == 1, f"{flag} should be given once in {args}, found {values}"
    return values[0]


def dockerfile_final_stage() -> list[tuple[str, str]]:
    """(KEYWORD, value) of the Dockerfile's last stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, value in dockerfile_final_stage():
        if keyword == "ENV":
            for token in shlex.split(value):
                key, _, setting = token.partition("=")
                env[key] = setting
    return env


# --- schema validation ----------------------------------------------------------------------------


@cache
def load_crds(crd_dir: Path = KSERVE_CRDS) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, CRD) for every CustomResourceDefinition in the folder; parsed once (they are large)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds = []
    for path in sorted(crd_dir.glob("*.yaml")):
        document = yaml.load(path.read_text(), Loader=loader)  # a SafeLoader (the C one when built)
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
            crds.append((path.name, document))
    assert crds, f"no CustomResourceDefinitions under {crd_dir}"
    return tuple(crds)


def crd_schema(api_version: str, kind: str, crd_dir: Path = KSERVE_CRDS) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD version that serves `apiVersion` for `kind`."""
    group, _, version = api_version.partition("/")
    for file_name, crd in load_crds(crd_dir):
        spec = crd["spec"]
        if spec["group"] != group or spec["names"]["kind"] != kind:
            continue
        for served in spec["versions"]:
            if served["name"] == version:
                assert served.get("served", False), f"{api_version} {kind} is not served"
                schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
                return schema
        raise AssertionError(f"{file_name} has no version {version} of {kind}")
    raise AssertionError(f"no CRD for {kind} in group {group} under {crd_dir}")


def kubernetes_strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema that the API server's strict field validation would apply.

    Unknown fields are errors (an object with `properties` and no `additionalProperties` gets
    `additionalProperties: false`) except under `x-kubernetes-preserve-unknown-fields`; an
    `x-kubernetes-int-or-string` without its `anyOf` gets one. The other `x-kubernetes-*` keys stay
    annotations (jsonschema ignores keywords it does not know).
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: kubernetes_strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = kubernetes_strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = kubernetes_strict(out["items"])
    for keyword in ("anyOf", "allOf", "oneOf"):
        if keyword in out:
            out[keyword] = [kubernetes_strict(sub) for sub in out[keyword]]
    if "not" in out:
        out["not"] = kubernetes_strict(out["not"])
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@cache
def validator_for(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = kubernetes_strict(crd_schema(api_version, kind))
    # OpenAPI 3.0 schema objects follow JSON Schema draft 4/5 semantics.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=FORMATS)


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    validator = validator_for(manifest["apiVersion"], manifest["kind"])
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("path", "api_version", "kind"),
    [
        (RUNTIME_FILE, "serving.kserve.io/v1alpha1", "ServingRuntime"),
        (ISVC_FILE, "serving.kserve.io/v1beta1", "InferenceService"),
    ],
    ids=["servingruntime", "inferenceservice"],
)
def test_manifest_validates_against_the_kserve_crd_schema(path: Path, api_version: str, kind: str) -> None:
    manifest = load_manifest(path)
    assert (manifest["apiVersion"], manifest["kind"]) == (api_version, kind)
    assert schema_errors(manifest) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


BROKEN = [
    # (file, how to break it, a path the error must name)
    (RUNTIME_FILE, _set("spec.containers.0.ports.0.containerPort", "8080"), "spec.containers.0.ports.0.containerPort"),
    (RUNTIME_FILE, _set("spec.containers.0.ports.1.containerPort", 2**40), "spec.containers.0.ports.1.containerPort"),
    (RUNTIME_FILE, _set("spec.supportedModelFormats.0.autoSelect", "yes"), "spec.supportedModelFormats.0.autoSelect"),
    (RUNTIME_FILE, _set("spec.supportedModelFormats.0.priority", 0), "spec.supportedModelFormats.0.priority"),
    (RUNTIME_FILE, _set("spec.protocolVersions", "v2"), "spec.protocolVersions"),
    (RUNTIME_FILE, _set("spec.protocolVersion", ["v2"]), "spec"),  # misspelt: unknown field
    (
        RUNTIME_FILE,
        _set("spec.containers.0.readinessProbe.httpGet.port", [8080]),
        "spec.containers.0.readinessProbe.httpGet.port",
    ),
    (RUNTIME_FILE, _set("spec.containers.0.resources.limits.cpu", "two"), "spec.containers.0.resources.limits.cpu"),
    (RUNTIME_FILE, _delete("spec.containers"), "spec"),
    (ISVC_FILE, _set("spec.predictor.minReplicas", "1"), "spec.predictor.minReplicas"),
    (ISVC_FILE, _set("spec.predictor.scaleMetric", "gpu"), "spec.predictor.scaleMetric"),
    (ISVC_FILE, _delete("spec.predictor.model.modelFormat.name"), "spec.predictor.model.modelFormat"),
    (ISVC_FILE, _set("spec.predictor.model.storageURI", "s3://bucket/model"), "spec.predictor.model"),
    (ISVC_FILE, _delete("spec.predictor"), "spec"),
]


@pytest.mark.parametrize(("path", "mutate", "where"), BROKEN, ids=[f"{p.stem}-{w}" for p, _, w in BROKEN])
def test_schema_validation_rejects_broken_manifests(
    path: Path, mutate: Callable[[dict[str, Any]], None], where: str
) -> None:
    broken = copy.deepcopy(load_manifest(path))
    mutate(broken)
    errors = schema_errors(broken)
    assert errors, "the broken manifest passed the schema"
    assert any(e.startswith(where + ":") for e in errors), errors


def test_the_schema_is_picked_by_api_version(runtime: dict[str, Any]) -> None:
    assert (
        "supportedModelFormats"
        in crd_schema(runtime["apiVersion"], runtime["kind"])["properties"]["spec"]["properties"]
    )
    with pytest.raises(AssertionError, match="no version v1beta1"):
        crd_schema("serving.kserve.io/v1beta1", "ServingRuntime")
    with pytest.raises(AssertionError, match="no CRD for"):
        crd_schema("serving.kserve.io/v1alpha1", "NoSuchKind")
    # Without the strict pass an unknown field would slip through: the CRDs themselves do not forbid it.
    loose = jsonschema.Draft4Validator(crd_schema(runtime["apiVersion"], runtime["kind"]))
    misspelt = copy.deepcopy(runtime)
    misspelt["spec"]["protocolVersion"] = "v2"
    assert loose.is_valid(misspelt)
    assert schema_errors(misspelt)


# --- the contract between the runtime, the InferenceService, the image and the CLI --------------------


def test_runtime_speaks_v2_over_http_and_grpc(runtime: dict[str, Any]) -> None:
    assert runtime["metadata"]["name"] == "imgcls"
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    onnx = [f for f in runtime["spec"]["supportedModelFormats"] if f["name"] == "onnx"]
    assert onnx == [{"name": "onnx", "version": "1", "autoSelect": True, "priority": 1}]


def test_inference_service_selects_the_runtime(runtime: dict[str, Any], isvc: dict[str, Any]) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    fmt = model["modelFormat"]
    supported = runtime["spec"]["supportedModelFormats"]
    assert any(f["name"] == fmt["name"] and fmt.get("version", f.get("version")) == f.get("version") for f in supported)
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    for manifest in (runtime, isvc):
        assert DNS_1035_LABEL.fullmatch(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    assert "namespace" not in runtime["metadata"] and "namespace" not in isvc["metadata"]  # applied with -n


def test_container_ports_match_the_args(container: dict[str, Any]) -> None:
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's model into
    args = container["args"]
    assert args[0] == "serve"
    assert flag_value(args, "--host") == "0.0.0.0"
    ports = [(p["name"], p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]]
    # KServe routes to the first port (in RawDeployment mode the Service's port 80 targets it) and keeps
    # the others under their own numbers; Knative names HTTP/1 `http1` and gRPC `h2c`.
    assert ports == [("http1", HTTP_PORT, "TCP"), ("h2c", GRPC_PORT, "TCP")]
    assert int(flag_value(args, "--http-port")) == HTTP_PORT
    assert int(flag_value(args, "--port")) == GRPC_PORT


@pytest.mark.parametrize(
    ("probe", "path"), [("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")]
)
def test_probes_hit_the_v2_health_endpoints(container: dict[str, Any], probe: str, path: str) -> None:
    spec = container[probe]
    assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"httpGet"}
    port = spec["httpGet"]["port"]
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (by_name[port] if isinstance(port, str) else port) == HTTP_PORT
    assert spec["httpGet"]["path"] == path
    assert spec["httpGet"].get("scheme", "HTTP") == "HTTP"
    assert spec["timeoutSeconds"] < spec["periodSeconds"]


def test_the_model_is_served_from_mnt_models(container: dict[str, Any], isvc: dict[str, Any]) -> None:
    [model_arg] = flag_values(container["args"], "--model")
    name, _, source = model_arg.partition("=")
    assert name == "{{.Name}}"  # KServe substitutes the InferenceService's name
    assert source == MODEL_DIR
    # Nothing of the runtime's own may hide the storage initializer's mount.
    assert all(not m["mountPath"].startswith(MODEL_DIR) for m in container.get("volumeMounts", []))
    uri = isvc["spec"]["predictor"]["model"]["storageUri"]
    scheme, sep, rest = uri.partition("://")
    assert sep and scheme in STORAGE_SCHEMES, uri
    assert rest and not rest.endswith((".onnx", "/")), "storageUri names the model's folder (Hugging Face layout)"


def test_args_are_flags_that_imgcls_serve_accepts(container: dict[str, Any]) -> None:
    parser = build_parser()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            parsed = parser.parse_args(container["args"])
        except SystemExit:
            pytest.fail(f"`imgcls {' '.join(container['args'])}` is refused: {stderr.getvalue().strip()}")
        # The parser is strict: an unknown flag would have been refused the same way.
        with pytest.raises(SystemExit):
            parser.parse_args([*container["args"], "--no-such-flag", "1"])
    assert parsed.command == "serve"
    assert parsed.host == "0.0.0.0"
    assert parsed.port == GRPC_PORT
    assert parsed.http_port == HTTP_PORT
    assert parsed.model == ["{{.Name}}=" + MODEL_DIR]


def test_image_and_entrypoint_match_the_kustomization_and_dockerfile(container: dict[str, Any]) -> None:
    kustomization = load_manifest(DEPLOY / "kustomization.yaml")
    image_name, _, tag = container["image"].partition(":")
    placeholders = {image["name"]: image for image in kustomization["images"]}
    assert image_name in placeholders
    assert tag == placeholders[image_name]["newTag"]
    assert "command" not in container  # keep the image's ENTRYPOINT
    entrypoints = [json.loads(value) for keyword, value in dockerfile_final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints[-1] == ["imgcls"]


def test_container_runs_as_the_images_non_root_user(runtime: dict[str, Any], container: dict[str, Any]) -> None:
    users = [value for keyword, value in dockerfile_final_stage() if keyword == "USER"]
    uid, _, gid = users[-1].partition(":")
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(uid) != 0
    assert security["runAsGroup"] == int(gid) != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # A read-only root filesystem needs writable emptyDirs for /tmp and the Hugging Face cache.
    assert security["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in ("/tmp", dockerfile_env()["HF_HOME"]):
        assert "emptyDir" in volumes[mounts[path]], path


def test_env_and_metrics_follow_the_image(runtime: dict[str, Any], container: dict[str, Any]) -> None:
    image_env = dockerfile_env()
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == image_env["HF_HOME"] == "/var/cache/huggingface"
    # No IMGCLS_* variable may fight the flags above.
    assert not {"IMGCLS_PORT", "IMGCLS_HOST", "IMGCLS_HTTP_PORT", "IMGCLS_MODELS"} & set(env)
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == image_env["IMGCLS_METRICS_PORT"]
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


def test_resources_are_requested_and_bounded(container: dict[str, Any], isvc: dict[str, Any]) -> None:
    for resources in (container["resources"], isvc["spec"]["predictor"]["model"]["resources"]):
        assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
        assert resources["requests"]["cpu"] == resources["limits"]["cpu"]  # the server sizes threads to the limit


def test_inference_service_pod_settings(runtime: dict[str, Any], isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    # Service links would inject IMGCLS_PORT=tcp://... when deploy/service.yaml shares the namespace.
    assert predictor["enableServiceLinks"] is False
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # Knative (Serverless mode) accepts one container port; the runtime declares two.
    if len(runtime["spec"]["containers"][0]["ports"]) > 1:
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}


def _readme_kserve_section() -> str:
    text = (DEPLOY / "README.md").read_text()
    match = re.search(r"^## KServe\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "deploy/README.md has no '## KServe' section"
    return match.group(1)


def _code_lines(section: str) -> Iterator[str]:
    for block in re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.DOTALL):
        yield from block.splitlines()


def test_readme_documents_the_kserve_deployment(isvc: dict[str, Any]) -> None:
    section = _readme_kserve_section()
    code = "\n".join(_code_lines(section))
    for path in (RUNTIME_FILE, ISVC_FILE):
        assert re.search(rf"kubectl apply -f {re.escape(str(path.relative_to(ROOT)))} -n \S+", code), path.name
    assert "kubectl get inferenceservice" in code
    name = isvc["metadata"]["name"]
    for route in (f"/v2/models/{name}/infer", f"/v2/models/{name}_image/infer"):
        assert re.search(rf"curl .*{re.escape(route)}\b", code), route
    # The Hugging Face Inference API path, not a v2 one.
    assert re.search(rf"curl .*(?<!/v2)/models/{re.escape(name)}(?![\w/-])", code), f"/models/{name}"
    for word in ("storageUri", MODEL_DIR, "deploy/deployment.yaml", "RawDeployment", "Knative"):
        assert word in section, word
