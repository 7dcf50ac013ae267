"""The engine: the served models and the request path, with no knowledge of gRPC."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from imgcls.server.domain.errors import ModelLoadError, ModelNotFoundError, UnavailableError
from imgcls.server.domain.types import ClassifyRequest, Ranking
from imgcls.server.engine.model import ModelLimits, ServedModel
from imgcls.server.images.decoding import brief
from imgcls.server.runtime.cpus import available_cpus
from imgcls.server.settings import ModelSettings, ServerSettings
from imgcls.server.sources.local import ModelFiles, load_hf_folder, resolve_local

log = logging.getLogger(__name__)


def resolve_model_files(model: ModelSettings, settings: ServerSettings) -> ModelFiles:
    """Local folder, spec or .onnx file first; otherwise a Hugging Face repo id (downloaded or cached)."""
    local = resolve_local(model.source, model.dtype)
    if local is not None:
        return local
    from imgcls.server.sources import hub  # only servers that name a hub model pay for importing huggingface_hub

    if not hub.looks_like_repo_id(model.source):
        raise ModelLoadError(f"{model.source} is neither an existing path nor a repo id")
    repo_id, revision = hub.parse_repo_ref(model.source)
    fetched = hub.fetch_hub_model(
        repo_id,
        revision=revision,
        dtype=model.dtype,
        token=settings.hf_token,
        cache_dir=settings.cache_dir,
        prefer_gpu=any(p != "CPUExecutionProvider" for p in settings.runtime_for(model).providers),
    )
    return load_hf_folder(fetched.folder, fetched.dtype, source=model.source)


class Engine:
    """Owns the models, the preprocessing pool and their lifecycle."""

    def __init__(self, settings: ServerSettings, models: Iterable[ServedModel], pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {m.name: m for m in models}
        self.default_model = settings.default_model_name
        self._pool = pool
        self.accepting = True

    @classmethod
    def load(cls, settings: ServerSettings) -> Engine:
        """Load every configured model (downloading hub models first); ModelLoadError names the one that failed."""
        workers = settings.preprocess_threads or available_cpus()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")
        limits = ModelLimits(
            max_inputs_per_request=settings.max_inputs_per_request,
            max_image_pixels=settings.max_image_pixels,
            max_tensor_elements=settings.max_tensor_elements,
            jpeg_draft=settings.jpeg_draft,
        )
        models = []
        for model in settings.served_models:
            try:
                files = resolve_model_files(model, settings)
                served = ServedModel(
                    model.name,
                    files,
                    batching=settings.batching_for(model),
                    runtime=settings.runtime_for(model),
                    limits=limits,
                    preprocess_pool=pool,
                )
            except ModelLoadError as exc:
                prefix = f"model {model.name}: "
                message = exc.message if exc.message.startswith(prefix) else prefix + exc.message
                raise ModelLoadError(message) from None
            except Exception as exc:  # e.g. preprocessing config the compiler refuses
                raise ModelLoadError(f"model {model.name} ({model.source}): {exc}") from exc
            models.append(served)
            log.info(
                "loaded model %s from %s (variant %s, input %s %s %s, %d labels, providers %s) in %.2fs",
                model.name,
                files.source,
                files.variant or "-",
                served.backend.graph.input_name,
                list(served.backend.graph.input_shape),
                served.layout,
                len(served.labels),
                ",".join(served.backend.providers),
                served.load_seconds,
            )
        return cls(settings, models, pool)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for model in self.models.values():
            model.start(loop)

    def on_model_failure(self, listener: Callable[[str, BaseException], None]) -> None:
        """listener(model name, exception) when a model's batcher dies (called from its thread)."""
        for name, model in self.models.items():
            model.batcher.on_crash = functools.partial(listener, name)

    async def stop(self, drain: bool = True) -> None:
        self.accepting = False
        await asyncio.gather(*(m.stop(drain) for m in self.models.values()))
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.accepting and all(m.ready for m in self.models.values())

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name or self.default_model)
        if model is None:
            # brief(): a huge name must not crowd the served models out of the (length-capped) message.
            raise ModelNotFoundError(f"model {brief(name)} is not served; served models: {', '.join(self.models)}")
        return model

    async def classify(self, request: ClassifyRequest, deadline: float | None = None) -> tuple[str, list[Ranking]]:
        """(served model name, one ranking per result)."""
        if not self.accepting:
            raise UnavailableError("server is shutting down")
        model = self.get(request.model)
        rankings = await model.classify(request.inputs, request.options, request.preprocessor_overrides, deadline)
        return model.name, rankings
