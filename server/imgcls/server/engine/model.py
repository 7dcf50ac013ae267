"""A served model: decode -> preprocess -> batcher (ONNX Runtime) -> postprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from imgcls.server.domain.errors import InvalidInputError, ModelLoadError
from imgcls.server.domain.types import (
    Base64Image,
    ClassifyOptions,
    EncodedImage,
    FunctionToApply,
    ImageInput,
    Ranking,
    RawImage,
    TensorInput,
)
from imgcls.server.engine.backend import Backend
from imgcls.server.engine.batcher import BatchListener, CrashListener, DynamicBatcher
from imgcls.server.engine.budget import Lease
from imgcls.server.engine.description import BatchingDescription, ModelDescription, ModelStats, public_source
from imgcls.server.engine.pool import PriorityPool
from imgcls.server.images import decoding, dimensions, families
from imgcls.server.images.postprocessing import default_function, rank, validate_options
from imgcls.server.images.preprocessing import (
    MAX_OVERRIDE_SIDE,
    JpegDraft,
    Preprocessor,
    check_override_values,
    compile_preprocessor,
    merge_overrides,
)
from imgcls.server.settings import BatchingSettings
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
    jpeg_draft: JpegDraft


@dataclass
class RequestStats:
    requests: int = 0
    failed_requests: int = 0


class ServedModel:
    """One model as the engine serves it; the runtime behind it is any Backend."""

    def __init__(
        self,
        name: str,
        files: ModelFiles,
        backend: Backend,
        *,
        batching: BatchingSettings,
        instances: int = 1,
        limits: ModelLimits,
        preprocess_pool: Executor,
        load_seconds: float = 0.0,
    ) -> None:
        started = time.monotonic()
        self.name = name
        self.files = files
        self.limits = limits
        self._pool = preprocess_pool
        self._decode_slots = preprocess_pool.workers if isinstance(preprocess_pool, PriorityPool) else 1 << 30
        self.backend = backend
        self._batching = batching
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
            instances=instances,
            run_alone=self.backend.run_alone if self.backend.has_solo_session else None,
        )
        self.request_stats = RequestStats()
        # Loading the backend (given) plus compiling preprocessing and starting the batcher (here).
        self.load_seconds = load_seconds + time.monotonic() - started

    # -- what the model says about itself -----------------------------------------
    def describe(self) -> ModelDescription:
        graph = self.backend.graph
        return ModelDescription(
            name=self.name,
            source=public_source(self.files.source),
            variant=self.files.variant,
            input_name=graph.input_name,
            input_shape=graph.input_shape,
            input_dtype=graph.input_dtype.name,
            layout=self.layout,
            output_name=graph.output_name,
            labels=self.labels,
            preprocessing=dict(self.preprocessing),
            default_function=self.default_function,
            batching=BatchingDescription(
                max_batch_size=self.batcher.max_batch_size,
                max_queue_delay_us=self._batching.max_queue_delay_us,
                queue_limit=self.batcher.queue_limit,
                instances=self.batcher.instances,
            ),
            runtime=self.backend.describe(),
            ready=self.ready,
            load_seconds=self.load_seconds,
        )

    def stats(self) -> ModelStats:
        batcher = self.batcher.stats
        return ModelStats(
            requests=self.request_stats.requests,
            failed_requests=self.request_stats.failed_requests,
            inputs=batcher.inputs,
            batches=batcher.batches,
            batch_size_counts=dict(batcher.batch_size_counts),
            queue_time_s=batcher.queue_time_s,
            compute_time_s=batcher.compute_time_s,
            dropped_inputs=batcher.dropped_inputs,
        )

    @property
    def sample_bytes(self) -> int:
        """Bytes of one model input sample (a dynamic size counted at the largest input allowed)."""
        shape = self.backend.graph.sample_shape
        known = math.prod(d for d in shape if d)
        unknown = [d for d in shape if not d]
        if len(unknown) >= 2:  # height and width: up to MAX_MODEL_INPUT_PIXELS
            known *= MAX_MODEL_INPUT_PIXELS
        elif unknown:
            known *= MAX_OVERRIDE_SIDE
        return known * self.backend.graph.input_dtype.itemsize

    def request_cost(self, inputs: Sequence[ImageInput], *, decoding: bool = True) -> RequestCost:
        """What a request holds from admission to answer: its payload as received and as converted (two
        copies), a model input per image, one more copy of a tensor (its rows stacked into a batch, or
        converted to the model's dtype), and, until its images are decoded, what decoding them holds (see
        RequestCost). A tensor is counted from the bytes sent, never from the dims a caller claims (one whose
        dims and data disagree is refused by validation, not here); an image's decoding from its header, an
        estimate topped up when the image is decoded.

        decoding=False: decoding is charged only as each image is decoded (stream frames: see streams.py).
        """
        payload = tensors = images = 0
        decode: list[int] = []
        for item in inputs:
            size = input_bytes(item)
            payload += size
            if isinstance(item, TensorInput):
                tensors += size
                decode.append(0)
            else:
                images += 1
                decode.append(self._decode_estimate(item) if decoding else 0)
        # A request's images are decoded at most decode_slots at a time (the pool's threads): the largest
        # that many are what its decoding can hold at once.
        held = sum(sorted(decode, reverse=True)[: self._decode_slots])
        return RequestCost(2 * payload + tensors + images * self.sample_bytes + held, tuple(decode), held)

    def _decode_estimate(self, item: ImageInput) -> int:
        """What decoding an image will hold, from its header; 0 when the header does not say, or says an
        image over the pixel limit (refused as invalid, not as busy)."""
        if isinstance(item, RawImage):
            consistent = len(item.data) == item.width * item.height * item.format.channels
            size = (item.width, item.height) if consistent else None
        elif isinstance(item, Base64Image):
            size = dimensions.peek_base64_size(item.text)
        else:
            size = dimensions.peek_size(item.data)  # type: ignore[union-attr]
        if size is None or size[0] * size[1] > self.limits.max_image_pixels:
            return 0
        return decoded_bytes(*size)

    @property
    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    def add_batch_listener(self, listener: BatchListener) -> None:
        self.batcher.add_batch_listener(listener)

    def add_crash_listener(self, listener: CrashListener) -> None:
        self.batcher.add_crash_listener(listener)

    def count_dropped(self, inputs: int) -> None:
        self.batcher.count_dropped(inputs)

    def _complete_preprocessing(self, config: dict[str, Any]) -> dict[str, Any]:
        """The model's preprocessing, with its processor (from config.json's model_type, as transformers'
        AutoImageProcessor picks it), the graph's fixed size and layout filled in where unsaid."""
        config = {**config, "input_layout": self.layout}
        if families.processor_name(config) is None:
            by_model_type = families.processor_for_model_type(self.files.model_type)
            if by_model_type is None:
                what = (
                    "its preprocessor config names no image_processor_type"
                    if self.files.preprocessing
                    else "it has no preprocessor_config.json"
                )
                raise ModelLoadError(
                    f"{self.files.source}: {what}, and config.json's model_type {self.files.model_type!r} names no "
                    "image processor imgcls reproduces, so its preprocessing is unknown; add a "
                    "preprocessor_config.json with an image_processor_type, or serve it with a custom model spec"
                )
            config["image_processor_type"] = by_model_type
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
            steps = ", ".join(f"{key} {config[key]}" for key in ("size", "crop_size", "crop_pct") if key in config)
            raise InvalidInputError(
                f"preprocessing would produce {fixed[0]}x{fixed[1]} images but model {self.name} takes "
                f"{height}x{width} (its {families.processor_name(config)} with {steps or 'its defaults'})"
            )
        return preprocessor

    def preprocessor_for(self, overrides: dict[str, Any]) -> Preprocessor:
        if not overrides:
            return self.default_preprocessor
        check_override_values(overrides)  # bounded before json.dumps reads all of it
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
        lease: Lease | None = None,
        cost: RequestCost | None = None,
        *,
        checked: bool = False,
    ) -> list[Ranking]:
        """One ranking per result (a tensor input with batch N gives N), in input order (checked: see run())."""
        outputs = await self.run(inputs, overrides, deadline, options=options, lease=lease, cost=cost, checked=checked)
        return rank(outputs, self.labels, options, self.default_function)

    async def run(
        self,
        inputs: Sequence[ImageInput],
        overrides: dict[str, Any] | None = None,
        deadline: float | None = None,
        *,
        options: ClassifyOptions | None = None,
        lease: Lease | None = None,
        cost: RequestCost | None = None,
        checked: bool = False,
    ) -> np.ndarray:
        """The model's raw outputs, one row per result (N, classes), in input order.

        lease: the request's share of the memory budget, taken for cost (request_cost()); decoding grows
        it while an image holds more pixels than cost counted for it.
        checked: the caller ran check_request() already, before taking its lease (so that a plainly invalid
        request is refused as such, not as busy); otherwise it is checked here.
        """
        self.request_stats.requests += 1
        try:
            if not checked:
                self.check_request(inputs, options or ClassifyOptions())
            samples = await self.prepare(inputs, overrides or {}, lease, cost)
            return await self.infer(samples, deadline)
        except BaseException:
            self.request_stats.failed_requests += 1
            raise

    async def prepare(
        self,
        inputs: Sequence[ImageInput],
        overrides: dict[str, Any],
        lease: Lease | None = None,
        cost: RequestCost | None = None,
    ) -> list[np.ndarray]:
        """Decode and preprocess: images on the thread pool (cheapest first), tensors inline (zero-copy views)."""
        preprocessor = self.preprocessor_for(overrides)
        # Tensors first, on the loop: an invalid one refuses the request before any image is queued.
        tensors = {i: self._tensor_samples(i, item) for i, item in enumerate(inputs) if isinstance(item, TensorInput)}
        rows = sum(len(samples) for samples in tensors.values()) + len(inputs) - len(tensors)
        if rows > self.limits.max_inputs_per_request:
            raise InvalidInputError(
                f"request has {rows} samples (tensor batch dimensions included), over the limit of "
                f"{self.limits.max_inputs_per_request}"
            )
        images = len(inputs) - len(tensors)
        owner = lease.owner if lease is not None else ""
        if images and isinstance(self._pool, PriorityPool):
            self._pool.reserve(images, owner)  # bounded, per connection too: refused before anything is decoded
        results: list[Any] = []
        for index, item in enumerate(inputs):
            counted = cost.decode[index] if cost is not None else 0
            if index in tensors:
                results.append(tensors[index])
            elif isinstance(self._pool, PriorityPool):
                job = self._pool.submit_with_cost(
                    input_bytes(item), self._image_sample, index, item, preprocessor, lease, counted, owner=owner
                )
                results.append(asyncio.wrap_future(job))
            else:
                job = self._pool.submit(self._image_sample, index, item, preprocessor, lease, counted)
                results.append(asyncio.wrap_future(job))
        if images:
            try:
                results = await _gather_all(results)
            finally:
                if lease is not None and cost is not None:
                    lease.shrink(cost.decoding)  # every image is decoded (or failed): its pixels are gone
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

    def _image_sample(
        self,
        index: int,
        item: ImageInput,
        preprocessor: Preprocessor,
        lease: Lease | None = None,
        counted: int = 0,
    ) -> list[np.ndarray]:
        """counted: what the lease holds for decoding this image already (RequestCost.decode)."""
        decoded = 0
        try:
            image = decoding.to_pil(item, max_pixels=self.limits.max_image_pixels)  # type: ignore[arg-type]
            if lease is not None:
                # The header is read by Pillow, nothing decoded yet: whatever the request's admission did not
                # count (a format dimensions.py does not read, a header that said less) is taken now, and
                # may be refused now.
                decoded = max(0, decoded_bytes(image.width, image.height) - counted)
                lease.grow(decoded)
            image = preprocessor.prepare_image(image)
            self._check_image_size(image)
            return [preprocessor.to_array(image)]
        except InvalidInputError as exc:
            raise InvalidInputError(f"inputs[{index}]: {exc.message}") from None
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidInputError(
                f"inputs[{index}]: image data is truncated or corrupt ({decoding.short_cause(exc)})"
            ) from None
        finally:
            if lease is not None:
                lease.shrink(decoded)

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

    async def infer(self, samples: list[np.ndarray], deadline: float | None = None) -> np.ndarray:
        """Run pre-processed samples through the batcher: (N, classes) outputs."""
        futures = self.batcher.submit(samples, deadline)
        try:
            if len(futures) == 1:
                # The common case awaited as it is: its row of the batch's outputs, as a (1, classes) view.
                return (await futures[0])[None]
            rows = await _gather_all(futures)
        finally:
            for future in futures:
                future.cancel()  # no-op when done; frees queued work when the caller gives up
        return np.stack(rows)


@dataclass(frozen=True, slots=True)
class RequestCost:
    """What a request is charged to the memory budget when it is admitted (ServedModel.request_cost).

    decode: per input, the bytes counted for decoding it (0 for tensors, and for images whose header
    dimensions.py cannot read). decoding: the part of nbytes held for decoding, the largest few of those
    (a request's images are decoded a few at a time), given back once its images are decoded.
    """

    nbytes: int
    decode: tuple[int, ...]
    decoding: int = 0


def decoded_bytes(width: int, height: int) -> int:
    """What decoding an image may hold: RGB at full size and one converted copy (a JPEG drafted smaller
    holds less)."""
    return width * height * 3 * 2


def input_bytes(item: ImageInput) -> int:
    """The bytes an input carries as received."""
    if isinstance(item, EncodedImage | RawImage):
        return len(item.data)
    if isinstance(item, Base64Image):
        return len(item.text)
    return len(item.raw_data) + 8 * len(item.float_data)  # a float list: 8-byte Python floats at least


async def _gather_all(items: Sequence[Any]) -> list[Any]:
    """Like gather, but every awaitable is awaited (no orphaned exceptions), the first error (in order) wins,
    and plain values pass through as they are.

    Futures are gathered as they are: wrapping each in a coroutine made gather start a task per future.
    """
    results = await asyncio.gather(*(item for item in items if _awaitable(item)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    awaited = iter(results)
    return [next(awaited) if _awaitable(item) else item for item in items]


def _awaitable(item: Any) -> bool:
    return asyncio.isfuture(item) or asyncio.iscoroutine(item)


__all__ = ["FunctionToApply", "ModelLimits", "RequestCost", "ServedModel"]
