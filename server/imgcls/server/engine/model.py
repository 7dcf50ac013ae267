"""A served model: decode -> preprocess -> batcher (ONNX Runtime) -> postprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from imgcls.server.domain.errors import ImgclsError, InvalidInputError, ModelLoadError
from imgcls.server.domain.types import (
    ClassifyOptions,
    FunctionToApply,
    ImageInput,
    Ranking,
    TensorInput,
)
from imgcls.server.engine.batcher import DynamicBatcher
from imgcls.server.images import decoding
from imgcls.server.images.postprocessing import default_function, rank, validate_options
from imgcls.server.images.preprocessing import MAX_OVERRIDE_SIDE, Preprocessor, compile_preprocessor, merge_overrides
from imgcls.server.runtime.onnx import OnnxBackend
from imgcls.server.settings import BatchingSettings, RuntimeSettings
from imgcls.server.sources.local import ModelFiles
from PIL import Image

log = logging.getLogger(__name__)

_PREPROCESSOR_CACHE_SIZE = 32


# The largest image a model input may be made from (a dynamic-size graph takes whatever comes):
# the largest an override may ask for, 2048 x 2048.
MAX_MODEL_INPUT_PIXELS = MAX_OVERRIDE_SIDE * MAX_OVERRIDE_SIDE


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Request limits that protect the server, from the server settings."""

    max_inputs_per_request: int
    max_image_pixels: int
    max_tensor_elements: int
    jpeg_draft: bool


@dataclass
class RequestStats:
    requests: int = 0
    failed_requests: int = 0


class ServedModel:
    def __init__(
        self,
        name: str,
        files: ModelFiles,
        *,
        batching: BatchingSettings,
        runtime: RuntimeSettings,
        limits: ModelLimits,
        preprocess_pool: Executor,
    ) -> None:
        started = time.monotonic()
        self.name = name
        self.files = files
        self.limits = limits
        self._pool = preprocess_pool
        self.backend = OnnxBackend(files.onnx_path, runtime.options(), files.output_name)
        graph = self.backend.graph
        self.layout = files.preprocessing.get("input_layout") or graph.guess_layout()
        self.preprocessing = self._complete_preprocessing(files.preprocessing)
        self.labels = files.labels or tuple(f"LABEL_{i}" for i in range(graph.num_classes or 0))
        if graph.num_classes and files.labels and len(files.labels) != graph.num_classes:
            raise ModelLoadError(
                f"{files.source}: {len(files.labels)} labels but the model outputs {graph.num_classes} scores"
            )
        self.default_function = files.default_function or default_function(files.problem_type, len(self.labels))
        self._preprocessors: OrderedDict[str, Preprocessor] = OrderedDict()
        self.default_preprocessor = self._compile(self.preprocessing)
        self.batcher = DynamicBatcher(
            self.backend.run,
            name=name,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_us / 1e6,
            queue_limit=batching.queue_limit,
            fixed_batch=graph.fixed_batch,
            instances=runtime.resolved_instances(),
            run_alone=self.backend.run_alone if self.backend.has_solo_session else None,
        )
        self.request_stats = RequestStats()
        self.load_seconds = time.monotonic() - started

    def _complete_preprocessing(self, config: dict[str, Any]) -> dict[str, Any]:
        """The model's preprocessing, with the graph's fixed size and layout filled in where unsaid."""
        config = {**config, "input_layout": self.layout}
        height, width = self._graph_hw()
        if "size" not in config and height and width:
            config["size"] = {"height": height, "width": width}
        return config

    def _graph_hw(self) -> tuple[int | None, int | None]:
        shape = self.backend.graph.sample_shape
        return (shape[0], shape[1]) if self.layout == "NHWC" else (shape[1], shape[2])

    def _compile(self, config: dict[str, Any]) -> Preprocessor:
        preprocessor = compile_preprocessor(
            config, dtype=self.backend.graph.input_dtype, jpeg_draft=self.limits.jpeg_draft
        )
        fixed = preprocessor.fixed_output_hw
        height, width = self._graph_hw()
        if fixed and ((height and fixed[0] != height) or (width and fixed[1] != width)):
            raise InvalidInputError(
                f"preprocessing would produce {fixed[0]}x{fixed[1]} images but model {self.name} takes {height}x{width}"
            )
        return preprocessor

    def preprocessor_for(self, overrides: dict[str, Any]) -> Preprocessor:
        if not overrides:
            return self.default_preprocessor
        key = json.dumps(overrides, sort_keys=True)
        cached = self._preprocessors.get(key)
        if cached is None:
            cached = self._compile(merge_overrides(self.preprocessing, overrides))
            self._preprocessors[key] = cached
            if len(self._preprocessors) > _PREPROCESSOR_CACHE_SIZE:
                self._preprocessors.popitem(last=False)
        else:
            self._preprocessors.move_to_end(key)
        return cached

    @property
    def ready(self) -> bool:
        return self.batcher.ready

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.batcher.start(loop)

    async def stop(self, drain: bool = True) -> None:
        await self.batcher.stop(drain)

    # -- the request path ----------------------------------------------------
    def check_request(self, inputs: Sequence[ImageInput], options: ClassifyOptions) -> None:
        if not inputs:
            raise InvalidInputError("request has no inputs")
        if len(inputs) > self.limits.max_inputs_per_request:
            raise InvalidInputError(
                f"request has {len(inputs)} inputs, over the limit of {self.limits.max_inputs_per_request}"
            )
        validate_options(options)

    async def classify(
        self,
        inputs: Sequence[ImageInput],
        options: ClassifyOptions,
        overrides: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> list[Ranking]:
        """One ranking per result (a tensor input with batch N gives N), in input order."""
        self.request_stats.requests += 1
        try:
            self.check_request(inputs, options)
            samples = await self.prepare(inputs, overrides or {})
            return await self.infer(samples, options, deadline)
        except BaseException:
            self.request_stats.failed_requests += 1
            raise

    async def prepare(self, inputs: Sequence[ImageInput], overrides: dict[str, Any]) -> list[np.ndarray]:
        """Decode and preprocess: images on the thread pool, tensors inline (zero-copy views)."""
        preprocessor = self.preprocessor_for(overrides)
        loop = asyncio.get_running_loop()
        tasks: list[Any] = []
        for index, item in enumerate(inputs):
            if isinstance(item, TensorInput):
                tasks.append(self._tensor_samples(index, item))
            else:
                tasks.append(loop.run_in_executor(self._pool, self._image_sample, index, item, preprocessor))
        results = tasks if all(isinstance(t, list) for t in tasks) else await _gather_all(tasks)
        total = sum(len(r) for r in results)
        if total > self.limits.max_inputs_per_request:
            raise InvalidInputError(
                f"request has {total} samples (tensor batch dimensions included), over the limit of "
                f"{self.limits.max_inputs_per_request}"
            )
        return [sample for result in results for sample in result]

    def _tensor_samples(self, index: int, item: TensorInput) -> list[np.ndarray]:
        try:
            array = decoding.tensor_to_array(
                item,
                sample_shape=self.backend.graph.sample_shape,
                dtype=self.backend.graph.input_dtype,
                max_elements=self.limits.max_tensor_elements,
            )
        except InvalidInputError as exc:
            raise InvalidInputError(f"inputs[{index}]: {exc.message}") from None
        return list(array)

    def _image_sample(self, index: int, item: ImageInput, preprocessor: Preprocessor) -> list[np.ndarray]:
        try:
            image = decoding.to_pil(item, max_pixels=self.limits.max_image_pixels)  # type: ignore[arg-type]
            image = preprocessor.prepare_image(image)
            self._check_image_size(image)
            return [preprocessor.to_array(image)]
        except InvalidInputError as exc:
            raise InvalidInputError(f"inputs[{index}]: {exc.message}") from None
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidInputError(
                f"inputs[{index}]: image data is truncated or corrupt ({decoding.short_cause(exc)})"
            ) from None

    def _check_image_size(self, image: Image.Image) -> None:
        """Refuse an image the graph cannot take, before it is converted or queued.

        With overrides such as do_resize false, preprocessing output follows the input's size;
        _compile cannot know it, and ONNX Runtime would fail the whole batch (INTERNAL for
        every caller in it) instead of refusing this one input.
        """
        height, width = self._graph_hw()
        if (height and image.height != height) or (width and image.width != width):
            raise InvalidInputError(
                f"preprocessing made a {image.height}x{image.width} (height x width) image but model {self.name} "
                f"takes {height or '?'}x{width or '?'}; resize or crop to that size (do_resize, do_center_crop)"
            )
        # A graph with dynamic height and width takes any size: without a bound, do_resize false on a
        # 6000x6000 PNG would become a 430 MB float tensor per input.
        if image.width * image.height > MAX_MODEL_INPUT_PIXELS:
            raise InvalidInputError(
                f"preprocessing made a {image.height}x{image.width} (height x width) image, over the limit of "
                f"{MAX_MODEL_INPUT_PIXELS} pixels for a model input; resize or crop it (do_resize, do_center_crop)"
            )

    async def infer(
        self, samples: list[np.ndarray], options: ClassifyOptions, deadline: float | None = None
    ) -> list[Ranking]:
        futures = self.batcher.submit(samples, deadline)
        try:
            rows = await _gather_all(futures)
        finally:
            for future in futures:
                future.cancel()  # no-op when done; frees queued work when the caller gives up
        return rank(np.stack(rows), self.labels, options, self.default_function)


async def _gather_all(aws: Sequence[Any]) -> list[Any]:
    """Like gather, but every awaitable is awaited (no orphaned exceptions) and the first error wins."""
    results = await asyncio.gather(*(_as_awaitable(a) for a in aws), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _as_awaitable(value: Any) -> Any:
    return (await value) if asyncio.isfuture(value) or asyncio.iscoroutine(value) else value


__all__ = ["FunctionToApply", "ImgclsError", "ModelLimits", "ServedModel"]
