"""Fetch an ONNX image-classification model from the Hugging Face Hub into the local HF cache.

Only the files one dtype variant needs are downloaded (config.json, preprocessor_config.json, the
variant's ``onnx/model*.onnx`` and its external-data files). The HF cache layout, HF_HOME /
HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE and the progress bars are huggingface_hub's
own. Every failure is raised as a ``ModelLoadError`` whose message names the repo.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.sources.variants import AUTO, VARIANT_FILES, resolve_dtype, variants_in

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

# One Hub name part, as the Hub accepts it: ASCII word chars, "-" and ".", starting and ending
# with a word char, at most 96 long.
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_REPO_REF = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[^\s@]+))?")

# The Hub could not be reached at all: fall back to the cache, as huggingface_hub itself does.
_UNREACHABLE = (httpx2.ConnectError, httpx2.TimeoutException, OfflineModeIsEnabled)


@dataclass(frozen=True)
class HubModel:
    folder: Path  # snapshot folder in the HF cache, Hugging Face layout
    dtype: str  # resolved dtype, never "auto"
    repo_id: str
    revision: str | None


def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """'owner/repo@rev' -> ('owner/repo', 'rev'); 'owner/repo' -> ('owner/repo', None)."""
    match = _REPO_REF.fullmatch(ref)
    if match is None or "--" in match["repo"] or ".." in match["repo"] or match["repo"].endswith(".git"):
        raise ModelLoadError(
            f"{ref!r} is not a Hugging Face repo reference; expected 'owner/repo' or 'owner/repo@revision'"
        )
    return match["repo"], match["rev"]


def looks_like_repo_id(ref: str) -> bool:
    """True for 'owner/repo' or 'owner/repo@rev', to tell a hub id from a local path that does not exist."""
    try:
        parse_repo_ref(ref)
    except ModelLoadError:
        return False
    return True


def fetch_hub_model(
    repo_id: str,
    *,
    revision: str | None = None,
    dtype: str = AUTO,
    token: str | None = None,
    cache_dir: Path | None = None,
    prefer_gpu: bool = False,
) -> HubModel:
    """Download (or find in the cache) the files of one dtype variant of an image-classification repo.

    prefer_gpu is accepted for a future GPU-aware "auto"; today "auto" ignores it.
    """
    if dtype != AUTO and dtype not in VARIANT_FILES:
        raise ModelLoadError(
            f"unknown dtype {dtype!r} for repo {repo_id}; valid dtypes: {', '.join([AUTO, *VARIANT_FILES])}"
        )
    parsed, _ = parse_repo_ref(repo_id)
    if parsed != repo_id:  # an '@rev' here would silently override `revision`
        raise ModelLoadError(f"pass the revision of {parsed} separately, not inside the repo id {repo_id!r}")
    fetch = _Fetch(repo_id, revision, token, cache_dir)
    if constants.is_offline_mode():
        return fetch.from_cache(dtype, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision)
    except _UNREACHABLE as e:
        log.warning("Hugging Face Hub unreachable (%s); looking for %s in the local cache", e, repo_id)
        return fetch.from_cache(dtype, f"the Hub is unreachable ({type(e).__name__}: {e})")
    except HfHubHTTPError as e:
        if e.response.status_code >= 500:  # Hub down: a cached copy is still good
            log.warning("Hugging Face Hub answered %s; looking for %s in the cache", e.response.status_code, repo_id)
            return fetch.from_cache(dtype, f"the Hub answered HTTP {e.response.status_code}")
        raise fetch.error(e, "look up the repo") from e
    return fetch.online(dtype, {s.rfilename for s in info.siblings or []})


class _Fetch:
    """One fetch of one repo; keeps the context every error message needs."""

    def __init__(self, repo_id: str, revision: str | None, token: str | None, cache_dir: Path | None) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.token = token
        self.cache_dir = cache_dir
        self.where = repo_id if revision is None else f"{repo_id}@{revision}"

    def online(self, dtype: str, repo_files: set[str]) -> HubModel:
        if CONFIG_FILE not in repo_files:
            raise ModelLoadError(f"repo {self.where} has no config.json; it is not a transformers-style model")
        # config.json is fetched by branch/tag so huggingface_hub records refs/<revision> for offline
        # starts; every other file is then pinned to the commit it came from so all files match.
        config_path = self.download(CONFIG_FILE, self.revision)
        folder = config_path.parent
        resolved = self.resolve(dtype, config_path)
        onnx_file = _onnx_path(resolved)
        if onnx_file not in repo_files:
            raise self.missing_variant(resolved, dtype, repo_files)
        if PREPROCESSOR_FILE not in repo_files:
            raise ModelLoadError(f"repo {self.where} has no {PREPROCESSOR_FILE}, which preprocessing needs")
        data_files = sorted(f for f in repo_files if _is_external_data_of(f, onnx_file))
        # The graph goes last: its presence in a snapshot then means its external data is there too,
        # which is what an offline start relies on.
        for name in (PREPROCESSOR_FILE, *data_files, onnx_file):
            self.download(name, folder.name)
        log.info("model %s (%s) ready in %s", self.where, resolved, folder)
        return HubModel(folder=folder, dtype=resolved, repo_id=self.repo_id, revision=self.revision)

    def from_cache(self, dtype: str, reason: str) -> HubModel:
        hint = "connect to the Hub once (without HF_HUB_OFFLINE=1) to download it"
        try:
            config_path = self.cached(CONFIG_FILE, self.revision)
        except LocalEntryNotFoundError:
            raise ModelLoadError(
                f"repo {self.where} is not in the local Hugging Face cache ({self.cache_root()}) and {reason}; {hint}"
            ) from None
        folder = config_path.parent
        resolved = self.resolve(dtype, config_path)
        onnx_file = _onnx_path(resolved)
        for name in (onnx_file, PREPROCESSOR_FILE):
            try:
                self.cached(name, folder.name)
            except LocalEntryNotFoundError:
                cached = variants_in([p.name for p in (folder / "onnx").glob("*.onnx")])
                what = f"the {resolved} variant ({name})" if name == onnx_file else name
                raise ModelLoadError(
                    f"repo {self.where} is cached without {what} and {reason} "
                    f"(cached variants: {', '.join(cached) or 'none'}); {hint}"
                ) from None
        log.info("model %s (%s) found in the local cache (%s): %s", self.where, resolved, reason, folder)
        return HubModel(folder=folder, dtype=resolved, repo_id=self.repo_id, revision=self.revision)

    def download(self, filename: str, revision: str | None) -> Path:
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=revision,
                    token=self.token,
                    cache_dir=self.cache_dir,
                )
            )
        except (HfHubHTTPError, LocalEntryNotFoundError, httpx2.HTTPError, OSError, HFValidationError) as e:
            raise self.error(e, f"download {filename}") from e

    def cached(self, filename: str, revision: str | None) -> Path:
        return Path(
            hf_hub_download(self.repo_id, filename, revision=revision, cache_dir=self.cache_dir, local_files_only=True)
        )

    def cache_root(self) -> str:
        return str(self.cache_dir or constants.HF_HUB_CACHE)

    def resolve(self, dtype: str, config_path: Path) -> str:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"repo {self.where}: config.json is not valid JSON ({e})") from e
        if not isinstance(config, dict):
            raise ModelLoadError(f"repo {self.where}: config.json is not a JSON object")
        _check_image_classifier(config, self.where)
        return resolve_dtype(dtype, config, f"repo {self.where}")

    def missing_variant(self, resolved: str, asked: str, repo_files: set[str]) -> ModelLoadError:
        available = variants_in([f.removeprefix("onnx/") for f in repo_files if f.startswith("onnx/")])
        why = " (chosen by transformers.js_config.dtype in config.json)" if asked == AUTO else ""
        return ModelLoadError(
            f"repo {self.where} has no {resolved} variant ({_onnx_path(resolved)}){why}; "
            f"it has: {', '.join(available) or 'no ONNX variants under onnx/'}"
        )

    def error(self, e: Exception, action: str) -> ModelLoadError:
        """Map a huggingface_hub / transport failure to one clear message naming the repo."""
        token_hint = "set HF_TOKEN or pass --hf-token with a token that has access"
        if isinstance(e, GatedRepoError):
            msg = (
                f"repo {self.repo_id} is gated and this request is not authorized: "
                f"accept its terms on the Hub, then {token_hint}"
            )
        elif isinstance(e, RepositoryNotFoundError):
            msg = f"repo {self.repo_id} not found on the Hub ({constants.ENDPOINT}); if it is private, {token_hint}"
        elif isinstance(e, RevisionNotFoundError):
            msg = f"repo {self.repo_id} has no revision {self.revision!r}"
        elif isinstance(e, EntryNotFoundError) and not isinstance(e, LocalEntryNotFoundError):
            msg = f"repo {self.where} could not {action}: the file is not in the repo"
        elif isinstance(e, HfHubHTTPError) and e.response.status_code in (401, 403):
            msg = f"repo {self.repo_id}: the Hub refused access (HTTP {e.response.status_code}); {token_hint}"
        elif isinstance(e, HFValidationError):
            msg = f"repo {self.where}: {e}"
        else:
            # Interrupted transfers land here. huggingface_hub writes each download to a
            # process-unique *.incomplete file and deletes it on failure, so nothing partial is reused.
            if isinstance(e, HfHubHTTPError):
                detail = f"the Hub answered HTTP {e.response.status_code}"
            else:
                text = str(e).strip()
                detail = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
            msg = f"repo {self.where}: could not {action} ({detail}); no partial file was kept, start again to retry"
        return ModelLoadError(msg)


def _onnx_path(dtype: str) -> str:
    return f"onnx/{VARIANT_FILES[dtype]}"


def _is_external_data_of(name: str, onnx_file: str) -> bool:
    """onnx/<stem>.onnx_data, onnx/<stem>.onnx_data_1, ... belong to onnx/<stem>.onnx."""
    return re.fullmatch(rf"{re.escape(onnx_file)}_data(?:_\d+)?", name) is not None


def _check_image_classifier(config: dict[str, Any], where: str) -> None:
    id2label = config.get("id2label")
    num_labels = config.get("num_labels")
    has_labels = (isinstance(id2label, dict) and len(id2label) > 0) or (isinstance(num_labels, int) and num_labels > 0)
    if not has_labels:
        raise ModelLoadError(
            f"repo {where} is not an image-classification model: config.json has neither id2label nor num_labels"
        )
    architectures = config.get("architectures")
    # transformers writes a default id2label into many configs, so labels alone do not make a
    # classifier: a listed architecture must be an image-classification head (e.g. ViTForImageClassification,
    # DeiTForImageClassificationWithTeacher). Configs without "architectures" get the benefit of the doubt.
    if isinstance(architectures, list) and architectures:
        heads = [a for a in architectures if isinstance(a, str) and "ForImageClassification" in a]
        if not heads:
            raise ModelLoadError(
                f"repo {where} is not an image-classification model: config.json architectures "
                f"{architectures} have no ...ForImageClassification head"
            )
