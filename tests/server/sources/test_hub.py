"""fetch_hub_model against a loopback fake Hub: what is downloaded, offline starts, errors, interruptions."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, constants, file_download, hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import close_session
from huggingface_hub.utils._runtime import is_xet_available
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.sources.hub import HubModel, fetch_hub_model, looks_like_repo_id, parse_repo_ref
from imgcls.server.sources.variants import VARIANT_FILES
from support.environment import without_server_variables
from support.fake_hub import FakeHub, Fault, dead_endpoint
from support.paths import EFFICIENTNET as SHARED

TOKEN = "hf_test_token_123"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is not available")


# --- repo builders ---------------------------------------------------------------------


def efficientnet_repo(root: Path, variants: tuple[str, ...] = ("fp32", "fp16", "q8", "int8")) -> Path:
    """The real efficientnet-lite0 in HF layout, ONNX files symlinked from the shared copy."""
    (root / "onnx").mkdir(parents=True)
    shutil.copy(SHARED / "config.json", root / "config.json")
    shutil.copy(SHARED / "preprocessor_config.json", root / "preprocessor_config.json")
    (root / "README.md").write_text("# efficientnet-lite0\n")
    for dtype in variants:
        (root / "onnx" / VARIANT_FILES[dtype]).symlink_to(SHARED / "onnx" / VARIANT_FILES[dtype])
    return root


def tiny_repo(
    root: Path,
    onnx_files: dict[str, bytes] | None = None,
    *,
    config: dict[str, Any] | None = None,
    preprocessor: bool = True,
) -> Path:
    """A repo whose ONNX bytes do not matter, only their names."""
    (root / "onnx").mkdir(parents=True)
    base = {"architectures": ["ViTForImageClassification"], "id2label": {"0": "cat", "1": "dog"}}
    (root / "config.json").write_text(json.dumps(base if config is None else config))
    if preprocessor:
        (root / "preprocessor_config.json").write_text(
            json.dumps({"image_processor_type": "ViTImageProcessor", "size": {"height": 8, "width": 8}})
        )
    files = onnx_files if onnx_files is not None else {"model.onnx": b"fp32-graph"}
    for name, data in files.items():
        (root / "onnx" / name).write_bytes(data)
    return root


def snapshot_files(model: HubModel) -> set[str]:
    return {p.relative_to(model.folder).as_posix() for p in model.folder.rglob("*") if p.is_file()}


def repo_paths(hub: FakeHub, repo_id: str) -> list[tuple[str, str]]:
    """(method, path) of every request about repo_id, to the Hub or to the storage host its large files are
    redirected to (the library's own side calls left out)."""
    return [
        (r.method, r.path)
        for r in hub.requests
        if f"/{repo_id}/" in r.path or r.path.endswith(repo_id) or (r.file is not None and r.file[0] == repo_id)
    ]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path.resolve() / "hf-cache"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path) -> Iterator[FakeHub]:
    """A fake Hub that huggingface_hub talks to, with an empty cache and no token anywhere."""
    with FakeHub() as fake:
        # huggingface_hub reads these env vars once at import into `constants`, and looks the
        # constants up at call time: patch the constants, as the env would have set them.
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"))
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
            monkeypatch.delenv(var, raising=False)
        close_session()  # no pooled connection to an earlier test's hub
        yield fake
        close_session()


def child_env(tmp_path: Path, cache: Path, endpoint: str, *, offline: bool) -> dict[str, str]:
    env = without_server_variables()
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


CHILD = """
import json, sys
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.sources.hub import fetch_hub_model
try:
    model = fetch_hub_model(sys.argv[1], dtype=sys.argv[2])
except ModelLoadError as e:
    print(json.dumps({"error": e.message}))
else:
    print(json.dumps({"folder": str(model.folder), "dtype": model.dtype}))
"""


def run_child(repo_id: str, dtype: str, env: dict[str, str]) -> dict[str, str]:
    """fetch_hub_model in a fresh interpreter, so env vars are read at import as in a real start."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, repo_id, dtype], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- what gets downloaded ---------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(("dtype", "onnx_name"), [("q8", "model_quantized.onnx"), ("fp16", "model_fp16.onnx")])
def test_downloads_only_the_variant_files(hub: FakeHub, tmp_path: Path, cache: Path, dtype: str, onnx_name: str):
    sha = hub.add_repo("owner/effnet", efficientnet_repo(tmp_path / "repo"))

    model = fetch_hub_model("owner/effnet", dtype=dtype)

    expected = {"config.json", "preprocessor_config.json", f"onnx/{onnx_name}"}
    assert hub.downloaded("owner/effnet") == expected
    assert snapshot_files(model) == expected
    assert model == HubModel(folder=cache / "models--owner--effnet" / "snapshots" / sha, dtype=dtype,
                             repo_id="owner/effnet", revision=None)  # fmt: skip
    assert (model.folder / "onnx" / onnx_name).read_bytes() == (SHARED / "onnx" / onnx_name).read_bytes()
    # One metadata call, then a HEAD + GET per file and nothing else about this repo.
    assert repo_paths(hub, "owner/effnet")[0] == ("GET", "/api/models/owner/effnet")
    assert len(repo_paths(hub, "owner/effnet")) == 1 + 2 * len(expected)


def test_external_data_files_are_fetched_with_their_graph(hub: FakeHub, tmp_path: Path):
    files = {
        "model.onnx": b"graph",
        "model.onnx_data": b"weights-0",
        "model.onnx_data_1": b"weights-1",
        "model_fp16.onnx": b"graph16",
        "model_fp16.onnx_data": b"weights16",
    }
    hub.add_repo("owner/big", tiny_repo(tmp_path / "repo", files))

    model = fetch_hub_model("owner/big", dtype="fp32")

    expected = {"config.json", "preprocessor_config.json", "onnx/model.onnx", "onnx/model.onnx_data",
                "onnx/model.onnx_data_1"}  # fmt: skip
    assert hub.downloaded("owner/big") == expected
    assert snapshot_files(model) == expected
    assert (model.folder / "onnx" / "model.onnx_data_1").read_bytes() == b"weights-1"
    # The graph is fetched last, so its presence in a snapshot implies its data files are there.
    assert hub.downloads("owner/big")[-1] == "onnx/model.onnx"


@pytest.mark.parametrize(
    ("js_dtype", "expected"),
    [("q8", "q8"), ({"model": "fp16"}, "fp16"), ({"vision_model": "int8"}, "int8"), ("auto", "fp32")],
)
def test_auto_dtype_from_transformers_js_config(hub: FakeHub, tmp_path: Path, js_dtype: Any, expected: str):
    config = {"architectures": ["ViTForImageClassification"], "id2label": {"0": "a"},
              "transformers.js_config": {"dtype": js_dtype}}  # fmt: skip
    files = {VARIANT_FILES[d]: d.encode() for d in ("fp32", "fp16", "q8", "int8")}
    hub.add_repo("owner/js", tiny_repo(tmp_path / "repo", files, config=config))

    model = fetch_hub_model("owner/js")

    assert model.dtype == expected
    assert f"onnx/{VARIANT_FILES[expected]}" in hub.downloaded("owner/js")
    assert (model.folder / "onnx" / VARIANT_FILES[expected]).read_bytes() == expected.encode()


def test_auto_dtype_falls_back_to_fp32(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/plain", tiny_repo(tmp_path / "repo", {"model.onnx": b"g", "model_q4.onnx": b"q"}))

    model = fetch_hub_model("owner/plain", dtype="auto", prefer_gpu=True)

    assert model.dtype == "fp32"
    assert hub.downloaded("owner/plain") == {"config.json", "preprocessor_config.json", "onnx/model.onnx"}


def test_auto_dtype_missing_from_repo_says_where_it_came_from(hub: FakeHub, tmp_path: Path):
    config = {"architectures": ["ViTForImageClassification"], "id2label": {"0": "a"},
              "transformers.js_config": {"dtype": "q4"}}  # fmt: skip
    hub.add_repo("owner/js", tiny_repo(tmp_path / "repo", config=config))

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/js")

    assert info.value.message == (
        "repo owner/js has no q4 variant (onnx/model_q4.onnx) (chosen by transformers.js_config.dtype "
        "in config.json); it has: fp32"
    )


def test_revision_branch_and_commit(hub: FakeHub, tmp_path: Path, cache: Path):
    hub.add_repo("owner/rev", tiny_repo(tmp_path / "main", {"model.onnx": b"main-graph"}))
    v2 = hub.add_repo("owner/rev", tiny_repo(tmp_path / "v2", {"model.onnx": b"v2-graph"}), branch="v2")

    by_branch = fetch_hub_model("owner/rev", revision="v2")
    by_commit = fetch_hub_model("owner/rev", revision=v2)

    assert by_branch.folder == by_commit.folder == cache / "models--owner--rev" / "snapshots" / v2
    assert (by_branch.folder / "onnx" / "model.onnx").read_bytes() == b"v2-graph"
    assert by_branch.revision == "v2"
    assert (cache / "models--owner--rev" / "refs" / "v2").read_text() == v2


# --- errors -----------------------------------------------------------------------------


def test_repo_not_found(hub: FakeHub):
    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/missing")

    assert info.value.message.startswith("repo owner/missing not found on the Hub")
    assert "HF_TOKEN" in info.value.message


def test_revision_not_found(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo"))

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/x", revision="nope")

    assert info.value.message == "repo owner/x has no revision 'nope'"
    assert hub.downloaded("owner/x") == set()


@needs_shared
def test_missing_variant_lists_the_repo_variants(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/x", efficientnet_repo(tmp_path / "repo", ("fp32", "fp16", "q8")))

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/x", dtype="q4")

    assert info.value.message == "repo owner/x has no q4 variant (onnx/model_q4.onnx); it has: fp32, fp16, q8"
    assert hub.downloaded("owner/x") == {"config.json"}  # failed before any ONNX byte


def test_unknown_dtype_is_refused_before_any_request(hub: FakeHub):
    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/x", dtype="fp8")

    assert info.value.message == (
        "unknown dtype 'fp8' for repo owner/x; valid dtypes: auto, fp32, fp16, q8, int8, uint8, q4, q4f16, bnb4"
    )
    assert hub.requests == []


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"architectures": ["ViTForImageClassification"]}, "has neither id2label nor num_labels"),
        ({"architectures": ["GPT2LMHeadModel"], "id2label": {"0": "LABEL_0"}}, "['GPT2LMHeadModel']"),
        (
            {"architectures": ["DetrForObjectDetection"], "num_labels": 91},
            "no ...ForImageClassification head",
        ),
    ],
)
def test_not_an_image_classifier(hub: FakeHub, tmp_path: Path, config: dict[str, Any], reason: str):
    hub.add_repo("owner/llm", tiny_repo(tmp_path / "repo", config=config))

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/llm")

    assert info.value.message.startswith("repo owner/llm is not an image-classification model: ")
    assert reason in info.value.message
    assert hub.downloaded("owner/llm") == {"config.json"}


def test_config_without_architectures_but_with_labels_is_accepted(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/bare", tiny_repo(tmp_path / "repo", config={"num_labels": 3}))

    assert fetch_hub_model("owner/bare").dtype == "fp32"


def test_repo_without_preprocessor_config(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/nopre", tiny_repo(tmp_path / "repo", preprocessor=False))

    with pytest.raises(ModelLoadError, match=r"^repo owner/nopre has no preprocessor_config.json"):
        fetch_hub_model("owner/nopre")


def test_gated_repo_needs_a_token_with_access(
    hub: FakeHub, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
):
    # A repo id that does not say "gated": each message must come from the Hub's answer, not the name.
    hub.add_repo("owner/terms", tiny_repo(tmp_path / "repo"), gated_token=TOKEN)
    hint = "set HF_TOKEN or pass --hf-token with a token that has access"

    # No token: the files answer 401 GatedRepo.
    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/terms")
    assert info.value.message == (
        f"repo owner/terms is gated and this request is not authorized: accept its terms on the Hub, then {hint}"
    )

    # A valid token whose user has not accepted the terms: 403 GatedRepo.
    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/terms", token=hub.add_token("hf_valid_but_no_access"))
    assert info.value.message.startswith("repo owner/terms is gated and this request is not authorized")

    # A token the Hub does not know: 401 on the first call (the metadata), as the real Hub does.
    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/terms", token="hf_wrong")
    assert info.value.message == f"repo owner/terms: the Hub refused access (HTTP 401); {hint}"
    assert not (cache / "models--owner--terms" / "snapshots").exists()

    hub.clear_log()
    by_argument = fetch_hub_model("owner/terms", token=TOKEN)
    assert snapshot_files(by_argument) == {"config.json", "preprocessor_config.json", "onnx/model.onnx"}
    assert {r.authorization for r in hub.requests if r.host == "hub"} == {f"Bearer {TOKEN}"}
    # The graph's bytes come from the storage host it is redirected to, without the token.
    assert [(r.method, r.authorization) for r in hub.requests if r.host == "cdn"] == [("GET", None)]

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    by_env = fetch_hub_model("owner/terms", cache_dir=tmp_path / "other-cache")
    assert by_env.folder.is_relative_to((tmp_path / "other-cache").resolve())
    assert snapshot_files(by_env) == snapshot_files(by_argument)


# --- offline ----------------------------------------------------------------------------


def test_offline_start_uses_the_cache_with_zero_requests(hub: FakeHub, tmp_path: Path, cache: Path):
    config = {"architectures": ["ViTForImageClassification"], "id2label": {"0": "a"},
              "transformers.js_config": {"dtype": "q8"}}  # fmt: skip
    files = {"model.onnx": b"fp32", "model_quantized.onnx": b"q8", "model_quantized.onnx_data": b"w"}
    hub.add_repo("owner/off", tiny_repo(tmp_path / "repo", files, config=config))
    online = fetch_hub_model("owner/off")
    hub.clear_log()

    # HF_ENDPOINT still points at the live fake Hub: any request would be logged.
    offline = run_child("owner/off", "auto", child_env(tmp_path, cache, hub.url, offline=True))

    assert offline == {"folder": str(online.folder), "dtype": "q8"}
    assert hub.requests == []


def test_unreachable_hub_falls_back_to_the_cache(hub: FakeHub, tmp_path: Path, cache: Path):
    hub.add_repo("owner/off", tiny_repo(tmp_path / "repo", {"model.onnx": b"g", "model_fp16.onnx": b"h"}))
    online = fetch_hub_model("owner/off", dtype="fp16")

    with dead_endpoint() as nowhere:
        result = run_child("owner/off", "fp16", child_env(tmp_path, cache, nowhere, offline=False))

    assert result == {"folder": str(online.folder), "dtype": "fp16"}


def test_hub_outage_falls_back_to_the_cache(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo"))
    online = fetch_hub_model("owner/x")
    hub.down_status = 503

    assert fetch_hub_model("owner/x") == online

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/other")
    assert info.value.message.startswith("repo owner/other is not in the local Hugging Face cache (")
    assert info.value.message.endswith(") and the Hub answered HTTP 503; "
                                       "connect to the Hub once (without HF_HUB_OFFLINE=1) to download it")  # fmt: skip


def test_offline_and_not_cached(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, cache: Path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/never")

    assert info.value.message == (
        f"repo owner/never is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
        "connect to the Hub once (without HF_HUB_OFFLINE=1) to download it"
    )
    assert hub.requests == []


def test_unreachable_and_not_cached(tmp_path: Path, cache: Path):
    with dead_endpoint() as nowhere:
        result = run_child("owner/never", "auto", child_env(tmp_path, cache, nowhere, offline=False))

    assert result["error"].startswith(
        f"repo owner/never is not in the local Hugging Face cache ({cache}) and the Hub is unreachable (ConnectError"
    )
    assert "connect to the Hub once" in result["error"]


def test_offline_other_variant_not_cached(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo", {"model.onnx": b"g", "model_fp16.onnx": b"h"}))
    fetch_hub_model("owner/x", dtype="fp32")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear_log()

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/x", dtype="fp16")

    assert info.value.message == (
        "repo owner/x is cached without the fp16 variant (onnx/model_fp16.onnx) and HF_HUB_OFFLINE is set "
        "(cached variants: fp32); connect to the Hub once (without HF_HUB_OFFLINE=1) to download it"
    )
    assert fetch_hub_model("owner/x", dtype="fp32").dtype == "fp32"
    assert hub.requests == []


# --- interrupted downloads --------------------------------------------------------------


def partial_files(cache: Path) -> list[Path]:
    return list(cache.rglob("*.incomplete"))


@needs_shared
def test_dropped_connection_is_resumed_by_huggingface_hub(hub: FakeHub, tmp_path: Path, cache: Path):
    hub.add_repo("owner/x", efficientnet_repo(tmp_path / "repo", ("fp32",)))
    fault = hub.add_fault("owner/x", "onnx/model.onnx", Fault(after_bytes=12 << 20))

    model = fetch_hub_model("owner/x", dtype="fp32")

    assert fault.reached.is_set()
    ranges = hub.byte_ranges("owner/x", "onnx/model.onnx")
    # huggingface_hub writes 10 MiB chunks; it resumes after the last whole chunk it wrote.
    assert ranges == [None, f"bytes={10 << 20}-"]
    original = (SHARED / "onnx" / "model.onnx").read_bytes()
    assert (model.folder / "onnx" / "model.onnx").read_bytes() == original
    assert partial_files(cache) == []


def test_failed_download_keeps_nothing_and_a_retry_is_complete(hub: FakeHub, tmp_path: Path, cache: Path):
    graph = os.urandom(3 << 20)
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo", {"model.onnx": graph}))
    # The connection drops half-way, and the resume attempt finds the Hub down.
    hub.add_fault("owner/x", "onnx/model.onnx", Fault(after_bytes=len(graph) // 2, then_status=503))

    with pytest.raises(ModelLoadError) as info:
        fetch_hub_model("owner/x")

    assert info.value.message == (
        "repo owner/x: could not download onnx/model.onnx (the Hub answered HTTP 503); "
        "no partial file was kept, start again to retry"
    )
    snapshot = next((cache / "models--owner--x" / "snapshots").iterdir())
    assert not (snapshot / "onnx" / "model.onnx").exists()
    assert partial_files(cache) == []

    hub.clear_log()
    model = fetch_hub_model("owner/x")

    assert (model.folder / "onnx" / "model.onnx").read_bytes() == graph
    ranges = hub.byte_ranges("owner/x", "onnx/model.onnx")
    assert ranges == [None]  # started afresh, nothing resumed from a leftover


def test_killed_mid_download_leaves_nothing_a_later_start_uses(hub: FakeHub, tmp_path: Path, cache: Path):
    graph = os.urandom(16 << 20)
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo", {"model.onnx": graph}))
    fault = hub.add_fault("owner/x", "onnx/model.onnx", Fault(after_bytes=12 << 20, stall=True))
    env = child_env(tmp_path, cache, hub.url, offline=False)
    child = subprocess.Popen([sys.executable, "-c", CHILD, "owner/x", "fp32"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert fault.reached.wait(timeout=60)
        deadline = time.monotonic() + 30
        # Kill it once part of the graph is on disk, so a real partial file is left behind.
        while not any(p.stat().st_size for p in partial_files(cache)) and time.monotonic() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    [leftover] = partial_files(cache)
    assert leftover.parent.name == "blobs" and 0 < leftover.stat().st_size < len(graph)

    model = fetch_hub_model("owner/x")

    assert (model.folder / "onnx" / "model.onnx").read_bytes() == graph
    ranges = hub.byte_ranges("owner/x", "onnx/model.onnx")
    assert ranges == [None, None]  # the later start downloaded from byte 0, ignoring the leftover


# --- repo references --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("owner/repo", ("owner/repo", None)),
        (
            "onnx-community/mobilenetv4_conv_small.e2400_r224_in1k",
            ("onnx-community/mobilenetv4_conv_small.e2400_r224_in1k", None),
        ),
        ("Xenova/vit-base-patch16-224@main", ("Xenova/vit-base-patch16-224", "main")),
        ("owner/repo@refs/pr/1", ("owner/repo", "refs/pr/1")),
        (
            "owner/repo@0123456789abcdef0123456789abcdef01234567",
            ("owner/repo", "0123456789abcdef0123456789abcdef01234567"),
        ),
    ],
)
def test_parse_repo_ref(ref: str, parsed: tuple[str, str | None]):
    assert parse_repo_ref(ref) == parsed
    assert looks_like_repo_id(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "repo",
        "owner/repo/extra",
        "./models/x",
        "/abs/path",
        "models/x.onnx/",
        "owner/repo@",
        "owner/re po",
        "owner/-repo",
        "owner/repo-",
        "owner/re--po",
        "owner/re..po",
        "owner/repo.git",
        "owner/rep\u00f6",
        "owner/repo@a b",
        "",
    ],
)
def test_not_a_repo_ref(ref: str):
    assert not looks_like_repo_id(ref)
    with pytest.raises(ModelLoadError, match="is not a Hugging Face repo reference"):
        parse_repo_ref(ref)


def test_revision_inside_the_repo_id_is_refused(hub: FakeHub):
    with pytest.raises(ModelLoadError, match="pass the revision of owner/x separately"):
        fetch_hub_model("owner/x@v2")
    assert hub.requests == []


# --- the fake answers as the Hub does -----------------------------------------------------


def ask(url: str, method: str = "HEAD", token: str | None = None) -> tuple[int, dict[str, str]]:
    """One raw request to the fake (no redirect followed): status and headers."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        connection.request(method, parts.path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def test_the_fake_answers_errors_with_the_hubs_status_codes(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/terms", tiny_repo(tmp_path / "repo"), gated_token=TOKEN)
    valid = hub.add_token("hf_valid_but_no_access")
    resolve = f"{hub.url}/owner/terms/resolve/main/config.json"
    cases = {
        # A missing repo: 401 to a stranger (private repos are not revealed), 404 to a known user.
        "missing, anonymous": (ask(f"{hub.url}/api/models/owner/missing", "GET"), 401, "RepoNotFound"),
        "missing, valid token": (ask(f"{hub.url}/api/models/owner/missing", "GET", valid), 404, "RepoNotFound"),
        "missing file, anonymous": (ask(f"{hub.url}/owner/missing/resolve/main/config.json"), 401, "RepoNotFound"),
        # A token the Hub does not know: 401 everywhere, metadata included, with no error code.
        "unknown token, metadata": (ask(f"{hub.url}/api/models/owner/terms", "GET", "hf_wrong"), 401, None),
        "unknown token, file": (ask(resolve, token="hf_wrong"), 401, None),
        # A gated repo's files: 401 without a token, 403 for a user who has not accepted its terms.
        "gated, anonymous": (ask(resolve), 401, "GatedRepo"),
        "gated, no access": (ask(resolve, token=valid), 403, "GatedRepo"),
        "gated metadata, anonymous": (ask(f"{hub.url}/api/models/owner/terms", "GET"), 200, None),
        "gated, access": (ask(resolve, token=TOKEN), 200, None),
    }
    for case, ((status, headers), want_status, want_code) in cases.items():
        assert (status, headers.get("X-Error-Code")) == (want_status, want_code), (case, headers)
    assert cases["unknown token, file"][0][1]["X-Error-Message"] == "Invalid credentials in Authorization header"


def test_the_fake_redirects_large_files_with_their_linked_size_and_etag(hub: FakeHub, tmp_path: Path):
    graph = os.urandom(1 << 20)
    sha = hub.add_repo("owner/x", tiny_repo(tmp_path / "repo", {"model.onnx": graph}))
    config = (tmp_path / "repo" / "config.json").read_bytes()

    status, headers = ask(f"{hub.url}/owner/x/resolve/main/onnx/model.onnx")
    assert status == 302
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(graph).hexdigest()}"'
    assert headers["X-Linked-Size"] == str(len(graph))
    assert headers["X-Repo-Commit"] == sha
    assert urlsplit(headers["Location"]).netloc != urlsplit(hub.url).netloc  # another origin, as a CDN is
    assert not any(name.lower().startswith("x-xet") for name in headers)  # no Xet: see the test below
    cdn_status, cdn_headers = ask(headers["Location"], "GET")
    assert (cdn_status, cdn_headers["Content-Length"]) == (200, str(len(graph)))

    # A small file is answered in place, its ETag the git blob id (what `git hash-object` prints).
    status, headers = ask(f"{hub.url}/owner/x/resolve/main/config.json")
    git_blob_id = hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()
    assert (status, headers["ETag"], headers["Content-Length"]) == (200, f'"{git_blob_id}"', str(len(config)))


def test_huggingface_hub_reads_the_fakes_errors_as_the_hubs(hub: FakeHub, tmp_path: Path):
    hub.add_repo("owner/terms", tiny_repo(tmp_path / "repo"), gated_token=TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("owner/missing")
    with pytest.raises(GatedRepoError):
        hf_hub_download("owner/terms", "config.json")
    with pytest.raises(HfHubHTTPError) as refused:
        hf_hub_download("owner/terms", "config.json", token="hf_wrong")
    # Not "repo not found": huggingface_hub tells a bad token apart by the Hub's message.
    assert not isinstance(refused.value, RepositoryNotFoundError)
    assert refused.value.response.status_code == 401


def test_large_files_download_over_plain_http_even_with_hf_xet_installed(
    hub: FakeHub, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
):
    # The path chosen for the fake: no Xet headers, so huggingface_hub downloads a large file from the
    # redirect over HTTP even where hf_xet would be used for a real Hub repo stored on Xet.
    pytest.importorskip("hf_xet")
    assert is_xet_available()

    def no_xet(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("huggingface_hub took the Xet path")

    monkeypatch.setattr(file_download, "xet_get", no_xet)
    graph = os.urandom(1 << 20)
    hub.add_repo("owner/x", tiny_repo(tmp_path / "repo", {"model.onnx": graph}))

    model = fetch_hub_model("owner/x")

    assert (model.folder / "onnx" / "model.onnx").read_bytes() == graph
    # The bytes came from the redirect's storage host, and the cache names the blob by its sha256 (the
    # X-Linked-Etag), as for an LFS file from the real Hub.
    assert [(r.method, r.file) for r in hub.requests if r.host == "cdn"] == [("GET", ("owner/x", "onnx/model.onnx"))]
    blob = (model.folder / "onnx" / "model.onnx").resolve()
    assert blob.parent.name == "blobs" and blob.name == hashlib.sha256(graph).hexdigest()
