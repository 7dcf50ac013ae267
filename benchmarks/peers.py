"""Optional peers: transformers.js in Node and the Python transformers pipeline, on the same model and images.

Each peer is skipped, with the reason recorded, when it cannot run here: no node/npm, the npm
package not installed (``--with-peers`` installs it into benchmarks/transformers_js), or
transformers not importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

JS_DIR = Path(__file__).resolve().parent / "transformers_js"
JS_PACKAGE = "@huggingface/transformers"
MODEL_ID = "efficientnet-lite0"
JS_TIMEOUT_S = 900


def _skipped(reason: str, log: Callable[[str], None], peer: str) -> dict[str, Any]:
    log(f"peer {peer} skipped: {reason}")
    return {"skipped": reason, "results": []}


def _js_installed() -> bool:
    return (JS_DIR / "node_modules" / JS_PACKAGE / "package.json").is_file()


def local_model_root(model_dir: Path, folder: Path) -> Path:
    """A transformers.js localModelPath: <root>/<model-id>/ with config, preprocessor config and onnx/model.onnx."""
    target = folder / MODEL_ID
    (target / "onnx").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        (target / name).symlink_to(model_dir / name)
    (target / "onnx" / "model.onnx").symlink_to(model_dir / "onnx" / "model.onnx")
    return folder


def run_transformers_js(
    *,
    with_peers: bool,
    quick: bool,
    model_dir: Path,
    images: dict[str, Path],
    concurrencies: list[int],
    duration_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return _skipped("node or npm not found on PATH", log, "transformers.js")
    if quick and not with_peers:
        return _skipped("--quick without --with-peers", log, "transformers.js")
    if with_peers and not _js_installed():
        log(f"npm install in {JS_DIR}")
        # onnxruntime-node bundles its CPU binaries; its install script would only fetch CUDA ones from
        # NuGet (unreachable here, and not needed for a CPU benchmark).
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"},
            check=False,
        )
        if installed.returncode != 0:
            return _skipped(f"npm install failed (exit status {installed.returncode})", log, "transformers.js")
    if not _js_installed():
        return _skipped(
            f"{JS_PACKAGE} is not installed; run with --with-peers to npm install it", log, "transformers.js"
        )
    with tempfile.TemporaryDirectory(prefix="imgcls-tjs-") as tmp:
        root = local_model_root(model_dir, Path(tmp))
        command = [
            node,
            str(JS_DIR / "bench.mjs"),
            "--models-root",
            f"{root}/",
            "--model-id",
            MODEL_ID,
            "--concurrency",
            ",".join(str(c) for c in concurrencies),
            "--duration-s",
            str(duration_s),
            "--warmup-s",
            str(min(1.0, duration_s / 2)),
            "--max-requests",
            "5" if quick else "5000",
        ]
        for name, path in images.items():
            command += ["--image", f"{name}={path}"]
        log("transformers.js: " + " ".join(command[1:]))
        try:
            completed = subprocess.run(
                command, cwd=JS_DIR, capture_output=True, text=True, timeout=JS_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return _skipped(f"bench.mjs ran over {JS_TIMEOUT_S}s", log, "transformers.js")
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-5:]
        return _skipped(f"bench.mjs failed (exit {completed.returncode}): {' | '.join(tail)}", log, "transformers.js")
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    for row in output["results"]:
        log(f"  transformers.js {row['image']} c{row['concurrency']}: {row['images_per_s']:.1f} img/s")
    return output


def run_transformers_py(
    *, model_dir: Path, images: dict[str, Path], duration_s: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """The Python transformers image-classification pipeline, one image after another."""
    if importlib.util.find_spec("transformers") is None:
        return _skipped("transformers is not importable (pip install transformers torch)", log, "transformers (Python)")
    try:
        from transformers import pipeline  # type: ignore[import-not-found]

        classifier = pipeline("image-classification", model=str(model_dir))
    except Exception as exc:  # e.g. the folder has ONNX weights only
        return _skipped(f"cannot build the pipeline from {model_dir}: {exc}", log, "transformers (Python)")
    results = []
    for name, path in images.items():
        classifier(str(path))
        times: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < duration_s:
            t0 = time.perf_counter()
            classifier(str(path))
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1e3
        results.append(
            {
                "image": name,
                "concurrency": 1,
                "requests": len(times),
                "images_per_s": len(times) / sum(times),
                "latency_ms": {
                    "p50": float(np.percentile(ms, 50)),
                    "p90": float(np.percentile(ms, 90)),
                    "p99": float(np.percentile(ms, 99)),
                },
            }
        )
    return {"results": results}


def run_peers(
    *,
    with_peers: bool,
    quick: bool,
    model_dir: Path,
    images: dict[str, Path],
    concurrencies: list[int],
    duration_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    return {
        "transformers_js": run_transformers_js(
            with_peers=with_peers,
            quick=quick,
            model_dir=model_dir,
            images=images,
            concurrencies=concurrencies,
            duration_s=duration_s,
            log=log,
        ),
        "transformers_py": run_transformers_py(model_dir=model_dir, images=images, duration_s=duration_s, log=log),
    }
