"""The engine: the served models and the request lifecycle every front door shares.

Front doors only convert: their protocol's request to engine types, and the engine's answer or
error back. Admission (refusing work while shutting down), readiness, observation (metrics and the
debug line, through listeners) and streams all live here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from imgcls.server.domain.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
    kind_of,
)
from imgcls.server.domain.types import ClassifyRequest, Ranking
from imgcls.server.engine.admission import ReadGate
from imgcls.server.engine.backend import Backend
from imgcls.server.engine.budget import MemoryBudget
from imgcls.server.engine.description import ModelDescription, ModelStats
from imgcls.server.engine.model import ModelLimits, ServedModel
from imgcls.server.engine.observation import ReadinessListener, RequestListener, RequestRecord, log_request
from imgcls.server.engine.pool import PriorityPool
from imgcls.server.engine.streams import FrameResult, FrameStream
from imgcls.server.images.decoding import brief
from imgcls.server.runtime import memory
from imgcls.server.runtime.cpus import available_cpus
from imgcls.server.runtime.onnx import OnnxBackend, RuntimeOptions, is_gpu_provider
from imgcls.server.settings import ServerSettings
from imgcls.server.sources.local import ModelFiles
from imgcls.server.sources.resolve import resolve_model_files

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelFiles, RuntimeOptions], Backend]

UNKNOWN_MODEL = "_unknown"

# Freed heap is returned to the OS (malloc_trim) when this much work has been released since the last
# trim and less than TRIM_WHEN_BELOW_BYTES is in flight, checked every TRIM_CHECK_S.
TRIM_AFTER_BYTES = 64 << 20
TRIM_WHEN_BELOW_BYTES = 16 << 20
TRIM_CHECK_S = 1.0

# Caller-chosen strings are capped: they are echoed in answers and logged (never echoed when refused).
MAX_REQUEST_ID_CHARS = 256

# Bytes a message being received may hold, per slot of the read gate, as a share of the memory budget:
# the number of messages received at once is the budget over this many maximum-size messages.
_READ_SLOT_SHARE = 4
SMALL_BODY_SLOTS = 16


def onnx_backend(files: ModelFiles, options: RuntimeOptions) -> Backend:
    return OnnxBackend(files.onnx_path, options, files.output_name, first_by_default=files.first_output_by_default)


@dataclass(slots=True)
class Call:
    """What one request reports when it is answered, filled in as it goes."""

    protocol: str
    method: str
    model: str
    request_id: str = ""  # capped (observe(), set_request_id()): it goes to the log and the metrics listeners
    inputs: int = 0
    results: int = 0
    owner: str = ""  # who the work is charged to (a connection), for fair shares of the budget
    started: float = field(default_factory=time.perf_counter)

    def set_request_id(self, request_id: str) -> None:
        """For a door that learns the id after observe() began (it is in the body): checked here, once.

        The record keeps the capped id either way, as observe() does for an id it is given.
        """
        self.request_id = request_id[:MAX_REQUEST_ID_CHARS]
        check_request_id(request_id)


@dataclass(frozen=True, slots=True)
class Classified:
    model: str  # the served model's name (the default's when the request named none)
    rankings: list[Ranking]


@dataclass(frozen=True, slots=True)
class Scored:
    model: str
    outputs: np.ndarray  # (results, classes): the model's raw outputs


class Engine:
    """Owns the models, the preprocessing pool, admission, readiness and observation."""

    def __init__(self, settings: ServerSettings, models: Iterable[ServedModel], pool: Executor) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {m.name: m for m in models}
        # The most inputs any served model takes in one request: a door refuses more before converting them
        # (each model's own limit is checked after). Once: the served models do not change.
        self.input_bound = max((m.limits.max_inputs_per_request for m in self.models.values()), default=0)
        self.default_model = settings.default_model_name
        self._pool = pool
        self.budget = MemoryBudget(settings.resolved_memory_budget)
        slots = max(2, self.budget.limit // (_READ_SLOT_SHARE * settings.max_message_bytes))

        # Waiting costs next to nothing (the bytes stay with the sender), so the caps are generous: as many
        # calls as one connection may have open, and four times the open streams in all.
        def gate(slots: int, per_owner: int) -> ReadGate:
            return ReadGate(
                slots,
                per_owner=per_owner,
                max_waiting=4 * settings.max_streams,
                max_waiting_per_owner=settings.max_calls_per_connection,
                max_wait_s=settings.read_wait_s,
            )

        # gRPC unary messages (their size is known only once they are in).
        self.read_gate = gate(slots, max(1, slots // 2))
        # HTTP bodies, in gates of their own, so a line of HTTP bodies never stands before a gRPC message (or
        # the other way round): their bytes are counted in the budget as they arrive, so these slots bound
        # turns, not memory. Bodies that declare themselves small (a Content-Length of at most
        # LIGHT_MESSAGE_BYTES) have slots of their own, so they never wait behind large or slow ones.
        self.body_gate = gate(slots, max(1, slots // 2))
        self.small_body_gate = gate(SMALL_BODY_SLOTS, max(1, SMALL_BODY_SLOTS // 4))
        self._accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trimmer: asyncio.Task[None] | None = None
        # When the last request arrived: shutdown waits for arrivals to go quiet (see server.py).
        self.last_call_at = time.monotonic()
        self.active_streams = 0
        self._request_listeners: list[RequestListener] = [log_request]
        self._readiness_listeners: list[ReadinessListener] = []
        for name, model in self.models.items():
            model.add_crash_listener(functools.partial(self._model_failed, name))

    @classmethod
    def load(cls, settings: ServerSettings, backend_factory: BackendFactory | None = None) -> Engine:
        """Load every configured model (downloading hub models first); ModelLoadError names the one that failed."""
        make_backend = backend_factory or onnx_backend
        pool = preprocess_pool(settings)
        limits = ModelLimits(
            max_inputs_per_request=settings.max_inputs_per_request,
            max_image_pixels=settings.max_image_pixels,
            max_tensor_elements=settings.max_tensor_elements,
            jpeg_draft=settings.jpeg_draft,
        )
        models = []
        try:
            for model in settings.served_models:
                runtime = settings.runtime_for(model)
                started = time.monotonic()
                try:
                    files = resolve_model_files(
                        model.source,
                        model.dtype,
                        config_file=model.config_file,
                        hf_token=settings.hf_token,
                        cache_dir=settings.cache_dir,
                        prefer_gpu=any(is_gpu_provider(p) for p in runtime.providers),
                    )
                    served = ServedModel(
                        model.name,
                        files,
                        make_backend(files, runtime.options()),
                        batching=settings.batching_for(model),
                        instances=runtime.resolved_instances(),
                        limits=limits,
                        preprocess_pool=pool,
                        load_seconds=time.monotonic() - started,
                    )
                except ModelLoadError as exc:
                    prefix = f"model {model.name}: "
                    message = exc.message if exc.message.startswith(prefix) else prefix + exc.message
                    raise ModelLoadError(message) from None
                except Exception as exc:  # e.g. preprocessing config the compiler refuses
                    raise ModelLoadError(f"model {model.name} ({model.source}): {exc}") from exc
                models.append(served)
                d = served.describe()
                log.info(
                    "loaded model %s from %s (variant %s, input %s %s %s, %d labels, providers %s) in %.2fs",
                    d.name,
                    files.source,
                    d.variant or "-",
                    d.input_name,
                    list(d.input_shape),
                    d.layout,
                    d.num_labels,
                    ",".join(d.runtime.providers),
                    d.load_seconds,
                )
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return cls(settings, models, pool)

    # -- lifecycle -----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for model in self.models.values():
            model.start(loop)
        self._trimmer = loop.create_task(self._trim_after_load(self.budget.released), name="imgcls-trim")

    async def _trim_after_load(self, trimmed_at: int) -> None:
        """Once large work has been released and little is in flight, give the freed heap back to the OS."""
        while True:
            await asyncio.sleep(TRIM_CHECK_S)
            if self.worth_trimming(trimmed_at):
                trimmed_at = self.budget.released
                await asyncio.to_thread(memory.trim)

    def worth_trimming(self, trimmed_at: int) -> bool:
        """Large work released since trimmed_at, and little in flight now."""
        return self.budget.released - trimmed_at >= TRIM_AFTER_BYTES and self.budget.used <= TRIM_WHEN_BELOW_BYTES

    def begin_shutdown(self) -> None:
        """From now on every request is refused UNAVAILABLE; readiness listeners hear not-ready."""
        if self._accepting:
            self._accepting = False
            self._notify_readiness()

    async def stop(self, drain: bool = True) -> None:
        self.begin_shutdown()
        if self._trimmer is not None:
            self._trimmer.cancel()
        await asyncio.gather(*(m.stop(drain) for m in self.models.values()))
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def ready(self) -> bool:
        """The one source of readiness: health, GetModel and the v2 ready endpoints all read it."""
        return self._accepting and all(m.ready for m in self.models.values())

    def model_ready(self, name: str) -> bool:
        return self._accepting and self.get(name).ready

    def add_readiness_listener(self, listener: ReadinessListener) -> None:
        """listener(ready) on the event loop whenever readiness may have changed (shutdown, a model failed)."""
        self._readiness_listeners.append(listener)

    def add_request_listener(self, listener: RequestListener) -> None:
        """listener(record) for every answered request and stream frame, on the event loop."""
        self._request_listeners.append(listener)

    def _model_failed(self, name: str, exc: BaseException) -> None:
        # On the dying inference thread: every call to that model fails from now on.
        log.error("model %s can no longer serve (%s): reporting not ready", name, exc)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                self._loop.call_soon_threadsafe(self._notify_readiness)

    def _notify_readiness(self) -> None:
        ready = self.ready
        for listener in self._readiness_listeners:
            try:
                listener(ready)
            except Exception:
                log.exception("readiness listener failed")

    # -- admission -----------------------------------------------------------------
    def admit(self) -> None:
        """Every request passes here first, whatever door it came through."""
        self.last_call_at = time.monotonic()
        if not self._accepting:
            # UNAVAILABLE, not CANCELLED: clients and load balancers retry it on another replica.
            raise UnavailableError("server is shutting down; retry on another replica")

    # -- models ----------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            # brief(): a huge name must not crowd the served models out of the (length-capped) message.
            raise ModelNotFoundError(f"model {brief(name)} is not served; served models: {', '.join(self.models)}")
        return model

    def describe(self, name: str = "") -> ModelDescription:
        """The model's description, its readiness as the engine's (not ready once shutdown has begun)."""
        described = self.get(name).describe()
        return dataclasses.replace(described, ready=self._accepting and described.ready)

    def describe_all(self) -> list[ModelDescription]:
        return [self.describe(name) for name in self.models]

    def stats(self, name: str = "") -> ModelStats:
        return self.get(name).stats()

    def model_label(self, name: str) -> str:
        """A served model's name for metrics and logs; anything else is one label, not the caller's text."""
        if not name:
            return self.default_model
        return name if name in self.models else UNKNOWN_MODEL

    # -- the request lifecycle -------------------------------------------------------
    @contextlib.contextmanager
    def observe(
        self,
        protocol: str,
        method: str,
        model: str,
        request_id: str = "",
        inputs: int = 0,
        *,
        owner: str = "",
        admit: bool = True,
    ) -> Iterator[Call]:
        """Admit one request and record how it was answered (listeners), whatever the outcome.

        admit=False: a request of a stream admitted when it opened (it is served through the shutdown grace).
        """
        call = Call(protocol, method, self.model_label(model), request_id[:MAX_REQUEST_ID_CHARS], inputs, owner=owner)
        outcome = None
        try:
            if admit:
                self.admit()
            check_request_id(request_id)
            yield call
        except BaseException as exc:
            outcome = kind_of(exc)
            raise
        finally:
            self._emit(
                RequestRecord(
                    protocol=call.protocol,
                    method=call.method,
                    model=call.model,
                    request_id=call.request_id[:MAX_REQUEST_ID_CHARS],  # capped when set too; this is the last line
                    inputs=call.inputs,
                    results=call.results,
                    outcome=outcome,
                    seconds=time.perf_counter() - call.started,
                )
            )

    def _emit(self, record: RequestRecord) -> None:
        for listener in self._request_listeners:
            try:
                listener(record)
            except Exception:
                log.exception("request listener failed")

    async def classify(
        self, request: ClassifyRequest, *, deadline: float | None = None, call: Call | None = None
    ) -> Classified:
        """One ranking per result, from the named (or default) model.

        A front door that converts its request inside observe() passes the call it got, so a
        conversion error is observed too; without one, this opens its own. Either way the request id
        was checked by then (observe(), or Call.set_request_id for an id learnt later): not here again.
        """
        if call is None:
            with self.observe("engine", "Classify", request.model, request.request_id, len(request.inputs)) as call:
                return await self._classify(request, deadline, call)
        return await self._classify(request, deadline, call)

    async def _classify(self, request: ClassifyRequest, deadline: float | None, call: Call) -> Classified:
        model = self.get(request.model)
        model.check_request(request.inputs, request.options)  # what is plainly invalid is said so, not "busy"
        cost = model.request_cost(request.inputs)
        with self.budget.lease(cost.nbytes, call.owner) as lease:
            rankings = await model.classify(
                request.inputs,
                request.options,
                request.preprocessor_overrides,
                deadline,
                lease=lease,
                cost=cost,
                checked=True,
            )
        call.results = len(rankings)
        return Classified(model.name, rankings)

    async def score(
        self, request: ClassifyRequest, *, deadline: float | None = None, call: Call | None = None
    ) -> Scored:
        """The model's raw outputs, one row per result (for protocols that answer with tensors)."""
        if call is None:
            with self.observe("engine", "Score", request.model, request.request_id, len(request.inputs)) as call:
                return await self._score(request, deadline, call)
        return await self._score(request, deadline, call)

    async def _score(self, request: ClassifyRequest, deadline: float | None, call: Call) -> Scored:
        model = self.get(request.model)
        model.check_request(request.inputs, request.options)  # before the lease, as in _classify
        cost = model.request_cost(request.inputs)
        with self.budget.lease(cost.nbytes, call.owner) as lease:
            outputs = await model.run(
                request.inputs,
                request.preprocessor_overrides,
                deadline,
                options=request.options,
                lease=lease,
                cost=cost,
                checked=True,
            )
        call.results = len(outputs)
        return Scored(model.name, outputs)

    @contextlib.asynccontextmanager
    async def admit_stream(self, owner: str = "") -> AsyncIterator[None]:
        """Admission for a stream of any protocol, and the open-streams limit, for as long as it is open."""
        self.admit()
        if self.active_streams >= self.settings.max_streams:
            raise OverloadedError(f"server busy: {self.active_streams} streams open (limit); retry later")
        self.active_streams += 1
        try:
            yield
        finally:
            self.active_streams -= 1

    @contextlib.asynccontextmanager
    async def open_stream(
        self, protocol: str = "engine", method: str = "ClassifyStream", *, owner: str = ""
    ) -> AsyncIterator[FrameStream]:
        """An admitted imgcls frame stream; its frames are observed one by one as they are answered, each
        with its own lease."""
        async with self.admit_stream(owner):
            yield FrameStream(
                self,
                self.settings.stream_max_in_flight,
                on_result=lambda result, inputs: self._observe_frame(protocol, method, result, inputs),
                owner=owner,
            )

    def _observe_frame(self, protocol: str, method: str, result: FrameResult, inputs: int) -> None:
        self.last_call_at = time.monotonic()
        self._emit(
            RequestRecord(
                protocol=protocol,
                method=method,
                model=self.model_label(result.model),
                request_id=result.request_id,
                inputs=inputs,
                results=len(result.rankings),
                outcome=result.error.kind if result.error is not None else None,
                seconds=result.seconds,
                skipped=result.skipped,
            )
        )


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        # Never echoed: a huge id must not come back in the answer or the log.
        raise InvalidInputError(f"request_id: {len(request_id)} characters, over the limit of {MAX_REQUEST_ID_CHARS}")


def preprocess_pool(settings: ServerSettings) -> PriorityPool:
    """The decode/preprocess threads, one per usable CPU unless set; its queue as long as a model's."""
    workers = settings.preprocess_threads or available_cpus()
    return PriorityPool(workers, queue_limit=settings.batching.queue_limit)
