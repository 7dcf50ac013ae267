"""Where a model's files come from: a local folder, spec or .onnx file, else a Hugging Face repo id.

A source such as ``models/efficientnet-lite0`` is both a relative path and a valid repo id. The local
path wins when it exists; otherwise the Hub is asked, and when that fails too the error says both: the
absolute path that was looked for (and what it was taken relative to: the working directory, or the
config file that named it) and why the Hub lookup failed.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.server.domain.errors import ModelLoadError
from imgcls.server.sources.local import ModelFiles, load_hf_folder, load_local


def local_path(source: str, config_file: Path | None = None) -> Path:
    """The absolute path a source names: relative ones against config_file's folder, else the working directory."""
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = (config_file.parent if config_file is not None else Path.cwd()) / path
    return path.absolute()


def _not_found(source: str, path: Path, config_file: Path | None) -> str:
    """'no such file or folder /abs/x (x relative to ...)' for the error messages."""
    if Path(source).expanduser().is_absolute():
        return f"no such file or folder {path}"
    if config_file is not None:
        base = f"the folder of the config file {config_file}"
    else:
        base = f"the working directory {Path.cwd()}"
    return f"no such file or folder {path} ({source} taken relative to {base})"


def resolve_model_files(
    source: str,
    dtype: str,
    *,
    hf_token: str | None = None,
    cache_dir: Path | None = None,
    prefer_gpu: bool = False,
    config_file: Path | None = None,
) -> ModelFiles:
    """Local folder, spec or .onnx file first; otherwise a Hugging Face repo id (downloaded or cached).

    config_file: the config file that named the source (ModelSettings.config_file); its relative paths
    are taken relative to its folder. ModelLoadError when neither a local model nor the Hub has it.
    """
    path = local_path(source, config_file)
    if path.exists():
        return load_local(path, dtype, source=source)
    from imgcls.server.sources import hub  # only servers that name a hub model pay for importing huggingface_hub

    not_found = _not_found(source, path, config_file)
    if not hub.looks_like_repo_id(source):
        raise ModelLoadError(
            f"{source}: {not_found}; and it is not a Hugging Face repo id (owner/repo or owner/repo@revision)"
        )
    repo_id, revision = hub.parse_repo_ref(source)
    try:
        fetched = hub.fetch_hub_model(
            repo_id, revision=revision, dtype=dtype, token=hf_token, cache_dir=cache_dir, prefer_gpu=prefer_gpu
        )
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{source} is neither a local model nor one the Hugging Face Hub gave: as a path, {not_found}; "
            f"as a repo id, {exc.message}"
        ) from None
    return load_hf_folder(fetched.folder, fetched.dtype, source=source)
