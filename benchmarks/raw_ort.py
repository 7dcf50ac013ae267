"""The limit: raw ONNX Runtime ``session.run`` on pre-processed tensors, and what decoding costs.

Everything here runs in the harness process with the server's own code and settings, so the
figures are what the server could reach if gRPC, queuing and Python glue cost nothing:

- ``measure_batches``: images/s per batch size on the server's OnnxBackend (same thread and
  spinning settings, and as many runs side by side as the server has instances), and batch-1
  latency percentiles;
- ``measure_preprocess``: decode + preprocess cost per image (the server's open_image and
  compiled Preprocessor), with jpeg_draft on and off;
- ``measure_pipeline``: the straightforward in-process path, decode (draft off) + preprocess +
  batch-1 run, one image after another; the server's JPEG figures are compared with it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from imgcls.server.engine.engine import onnx_backend
from imgcls.server.engine.model import ModelLimits, ServedModel
from imgcls.server.images.decoding import open_image
from imgcls.server.images.preprocessing import JPEG_DRAFT_MODES, JpegDraft, Preprocessor, compile_preprocessor
from imgcls.server.settings import BatchingSettings, RuntimeSettings, ServerSettings
from imgcls.server.sources.local import resolve_local

_DEFAULTS = ServerSettings()


@dataclass(frozen=True, slots=True)
class Budget:
    """How long one measurement may run: stop at max_runs or after seconds, whichever comes first."""

    seconds: float
    max_runs: int
    min_runs: int = 3
    warmup_runs: int = 2


class LocalModel:
    """The served model as the server builds it (ServedModel), used in-process without its batcher."""

    def __init__(self, model_dir: Path, dtype: str = "fp32") -> None:
        files = resolve_local(str(model_dir), dtype)
        if files is None:
            raise FileNotFoundError(f"no model at {model_dir}")
        self._pool = ThreadPoolExecutor(max_workers=1)  # ServedModel wants one; never used here
        # The ONNX backend with RuntimeSettings().options(), as Engine.load builds it: the server's session settings.
        runtime = RuntimeSettings()
        self.served = ServedModel(
            "bench",
            files,
            onnx_backend(files, runtime.options()),
            batching=BatchingSettings(),
            instances=runtime.resolved_instances(),
            limits=ModelLimits(
                max_inputs_per_request=_DEFAULTS.max_inputs_per_request,
                max_image_pixels=_DEFAULTS.max_image_pixels,
                max_tensor_elements=_DEFAULTS.max_tensor_elements,
                jpeg_draft=_DEFAULTS.jpeg_draft,
            ),
            preprocess_pool=self._pool,
        )
        self.backend = self.served.backend
        self.onnx_path = files.onnx_path
        self.runtime_options = RuntimeSettings().options()
        self.instances = RuntimeSettings().resolved_instances()

    def preprocessor(self, *, jpeg_draft: bool | JpegDraft) -> Preprocessor:
        """The model's own preprocessing (preprocessor_config.json as the server completes it)."""
        return compile_preprocessor(
            self.served.preprocessing, dtype=self.backend.graph.input_dtype, jpeg_draft=jpeg_draft
        )

    def tensor_for(self, image_path: Path) -> np.ndarray:
        """One pre-processed sample (no batch dimension) with the exact path (jpeg_draft off)."""
        return self.preprocessor(jpeg_draft=False)(
            open_image(image_path.read_bytes(), max_pixels=_DEFAULTS.max_image_pixels)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _timed_runs(fn: Callable[[], Any], budget: Budget) -> list[float]:
    """Seconds per call of fn, after warm-up runs, within the budget."""
    for _ in range(budget.warmup_runs):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < budget.min_runs or (
        len(times) < budget.max_runs and time.perf_counter() - started < budget.seconds
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _full_decode(data: bytes) -> None:
    open_image(data, max_pixels=1 << 40).load()


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
    }


def _side_by_side(run: Callable[[], Any], instances: int, images_per_run: int, budget: Budget) -> dict[str, Any]:
    """images/s with `instances` threads calling run() at once, as the server's batcher instances do."""
    for _ in range(budget.warmup_runs):
        run()
    counts = [0] * instances
    stop_at = time.perf_counter() + budget.seconds

    def worker(index: int) -> None:
        while counts[index] < budget.min_runs or (sum(counts) < budget.max_runs and time.perf_counter() < stop_at):
            run()
            counts[index] += 1

    started = time.perf_counter()
    cpu_started = time.process_time()  # every thread of this process: ONNX Runtime's own included
    with ThreadPoolExecutor(max_workers=instances) as pool:
        list(pool.map(worker, range(instances)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    runs = sum(counts)
    return {
        "runs": runs,
        "images_per_s": runs * images_per_run / elapsed,
        "ms_per_batch": elapsed / runs * instances * 1e3,  # wall time of one run while all instances run
        "cpu_ms_per_image": cpu / (runs * images_per_run) * 1e3,
    }


def measure_batches(
    model: LocalModel, sample: np.ndarray, batch_sizes: list[int], budget: Budget, latency_budget: Budget
) -> dict[str, Any]:
    """images/s per batch size on a batch of copies of the real sample, and batch-1 latency.

    Measured as the server runs: its session settings and its number of instances running side by
    side. Where the server runs several instances, the same sizes are also measured one run at a
    time on the session that uses every core (the one a lone request gets; ONNX Runtime's own
    default), and the limit is the best of both: whichever way ONNX Runtime is faster here.
    Batch-1 latency is the lone request's: one run at a time on that every-core session.
    """
    backend = model.backend
    instances = model.instances
    configs: list[tuple[str, Any, int]] = [(f"{instances} side by side (server)", backend.run, instances)]
    if backend.has_solo_session:
        configs.append(("1 at a time, all cores", backend.run_alone, 1))
    rows = []
    for size in batch_sizes:
        batch = np.ascontiguousarray(np.stack([sample] * size))
        for mode, run, parallel in configs:
            measured = _side_by_side(functools.partial(run, batch), parallel, size, budget)
            rows.append({"batch_size": size, "mode": mode, "instances": parallel, **measured})
    best = max(rows, key=lambda r: r["images_per_s"])
    single = sample[None]
    latency = _timed_runs(lambda: backend.run_alone(single), latency_budget)
    result: dict[str, Any] = {
        "instances": instances,
        "intra_op_threads": model.runtime_options.intra_op_threads,
        "batches": rows,
        "best": {"batch_size": best["batch_size"], "images_per_s": best["images_per_s"], "mode": best["mode"]},
        "batch1_latency_ms": percentiles_ms(latency),
        "batch1_runs": len(latency),
    }
    if backend.has_solo_session:
        one_core = _timed_runs(lambda: backend.run(single), latency_budget)
        result["batch1_latency_one_instance_ms"] = percentiles_ms(one_core)
    return result


def _scores(model: LocalModel, sample: np.ndarray) -> np.ndarray:
    logits = np.asarray(model.backend.run_alone(sample[None]), dtype=np.float64)[0]
    exp = np.exp(logits - logits.max())
    return np.asarray(exp / exp.sum())


def measure_preprocess(model: LocalModel, images: dict[str, Path], budget: Budget) -> list[dict[str, Any]]:
    """Decode + preprocess per image in every jpeg_draft mode, with its fidelity (the largest change of any
    softmax score against the full decode); and the full decode alone."""
    rows = []
    for name, path in images.items():
        data = path.read_bytes()
        with open_image(data, max_pixels=_DEFAULTS.max_image_pixels) as probe:
            size = probe.size
        decode_only = _timed_runs(functools.partial(_full_decode, data), budget)
        exact = _scores(
            model, model.preprocessor(jpeg_draft="off")(open_image(data, max_pixels=_DEFAULTS.max_image_pixels))
        )
        for mode in JPEG_DRAFT_MODES:
            pre = model.preprocessor(jpeg_draft=mode)

            def one(data: bytes = data, pre: Preprocessor = pre) -> np.ndarray:
                return pre(open_image(data, max_pixels=_DEFAULTS.max_image_pixels))

            times = _timed_runs(one, budget)
            rows.append(
                {
                    "image": name,
                    "size": f"{size[0]}x{size[1]}",
                    "bytes": len(data),
                    "jpeg_draft": mode != "off",
                    "jpeg_draft_mode": mode,
                    "largest_score_change": float(np.abs(_scores(model, one()) - exact).max()),
                    "ms_per_image": percentiles_ms(times)["p50"],
                    "full_decode_ms": percentiles_ms(decode_only)["p50"],
                    "runs": len(times),
                }
            )
    return rows


def measure_pipeline(model: LocalModel, images: dict[str, Path], budget: Budget) -> list[dict[str, Any]]:
    """Sequential decode + preprocess + batch-1 run per image: the straightforward (draft off) path."""
    rows = []
    for name, path in images.items():
        data = path.read_bytes()
        for draft in (False, True):
            pre = model.preprocessor(jpeg_draft=draft)

            def one(data: bytes = data, pre: Preprocessor = pre) -> np.ndarray:
                sample = pre(open_image(data, max_pixels=_DEFAULTS.max_image_pixels))
                # One image after another: the every-core session, as a plain script's default session.
                return model.backend.run_alone(sample[None])

            times = _timed_runs(one, budget)
            rows.append(
                {
                    "image": name,
                    "jpeg_draft": draft,
                    "path": "straightforward" if not draft else "in-process, jpeg_draft",
                    "images_per_s": len(times) / sum(times),
                    "ms_per_image": percentiles_ms(times)["p50"],
                    "runs": len(times),
                }
            )
    return rows
