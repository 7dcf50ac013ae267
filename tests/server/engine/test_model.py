"""What a request is charged to the memory budget when it is admitted (ServedModel.request_cost), and that a
request whose decoding would not fit is refused then, before any of its images is decoded."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from imgcls.server.domain.errors import OverloadedError
from imgcls.server.domain.types import (
    Base64Image,
    ClassifyOptions,
    ClassifyRequest,
    EncodedImage,
    PixelFormat,
    RawImage,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine import model as model_module
from imgcls.server.engine.engine import Engine
from imgcls.server.engine.model import decoded_bytes
from imgcls.server.engine.streams import StreamFrame
from PIL import Image
from support.fake_backend import SAMPLE_SHAPE, fake_engine
from support.waiting import poll_until

MIB = 1 << 20


def encoded(width: int, height: int, fmt: str = "JPEG", **options: object) -> EncodedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(buffer, fmt, **options)
    return EncodedImage(buffer.getvalue())


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Images the model starts to decode (Pillow opens them on the pool), as their input sizes."""
    calls: list[int] = []
    real = model_module.decoding.to_pil

    def counting(item: object, **kwargs: object) -> object:
        calls.append(1)
        return real(item, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model_module.decoding, "to_pil", counting)
    yield calls


async def test_the_cost_counts_decoding_for_the_images_decoded_at_once() -> None:
    engine, _ = fake_engine()
    try:
        model = engine.get("")
        tensor = np.ones((1, *SAMPLE_SHAPE), np.float32).tobytes()
        inputs = (
            encoded(100, 50),
            encoded(20, 10, "PNG"),
            encoded(300, 200, "WEBP"),
            encoded(10, 10, "TIFF"),  # not read from its header: charged when it is decoded
            RawImage(width=4, height=2, format=PixelFormat.RGB8, data=bytes(24)),
            RawImage(width=4, height=2, format=PixelFormat.RGB8, data=bytes(5)),  # invalid: refused, not charged
            TensorInput(dims=(1, *SAMPLE_SHAPE), dtype=TensorDType.FLOAT32, raw_data=tensor),
        )
        cost = model.request_cost(inputs)
        assert cost.decode == (decoded_bytes(100, 50), decoded_bytes(20, 10), decoded_bytes(300, 200), 0, 48, 0, 0)
        payload = sum(len(item.data) for item in inputs[:6]) + len(tensor)  # type: ignore[union-attr]
        # The pool decodes two at a time (fake_engine's pool has two threads): the two largest are counted.
        largest_two = decoded_bytes(300, 200) + decoded_bytes(100, 50)
        assert cost.nbytes == 2 * payload + len(tensor) + 6 * model.sample_bytes + largest_two
    finally:
        await engine.stop(drain=False)


async def test_a_base64_image_is_charged_from_its_header_too() -> None:
    engine, _ = fake_engine()
    try:
        image = encoded(64, 48)
        cost = engine.get("").request_cost((Base64Image(base64.b64encode(image.data).decode()),))
        assert cost.decode == (decoded_bytes(64, 48),)
    finally:
        await engine.stop(drain=False)


async def test_an_image_over_the_pixel_limit_is_not_charged_but_refused_as_invalid() -> None:
    engine, _ = fake_engine(settings={"max_image_pixels": 100 * 100})
    try:
        assert engine.get("").request_cost((encoded(200, 200),)).decode == (0,)
    finally:
        await engine.stop(drain=False)


def classify(*inputs: object) -> ClassifyRequest:
    return ClassifyRequest(model="", inputs=tuple(inputs), options=ClassifyOptions())  # type: ignore[arg-type]


async def test_a_request_whose_decoding_does_not_fit_is_refused_before_anything_is_decoded(
    engine_with_budget: Engine, opened: list[int]
) -> None:
    # 3000 x 2000 decodes to 34 MiB: it fits the 64 MiB budget (56 MiB for large requests) alone, not beside
    # 40 MiB of other work; counted twice (at admission and again when decoded) it would never fit.
    image = encoded(3000, 2000)
    with engine_with_budget.budget.lease(40 * MIB):
        with pytest.raises(OverloadedError, match="server busy: 40 MiB of work in flight, budget 64 MiB"):
            await engine_with_budget.classify(classify(image))
        assert opened == []  # refused at admission: it never waited for the decode queue
        assert engine_with_budget.budget.used == 40 * MIB
    (ranking,) = (await engine_with_budget.classify(classify(image))).rankings
    assert len(ranking) == 3 and opened == [1]
    assert engine_with_budget.budget.used == 0


async def test_an_image_whose_header_is_not_read_here_is_still_charged_when_it_is_decoded(
    engine_with_budget: Engine, opened: list[int]
) -> None:
    image = encoded(3000, 2000, "TIFF", compression="tiff_deflate")
    assert len(image.data) < MIB
    with engine_with_budget.budget.lease(40 * MIB):
        with pytest.raises(OverloadedError, match="server busy"):
            await engine_with_budget.classify(classify(image))
        assert opened == [1]  # admitted (its size unknown), refused when Pillow read the header
        assert engine_with_budget.budget.used == 40 * MIB
    await engine_with_budget.classify(classify(image))
    assert engine_with_budget.budget.used == 0


async def test_what_decoding_held_is_given_back_before_the_model_runs() -> None:
    engine, backends = fake_engine(settings={"memory_budget_bytes": 64 * MIB})
    engine.start(asyncio.get_running_loop())
    backend = backends["fake"]
    backend.gate = threading.Event()
    try:
        image = encoded(2000, 2000)
        cost = engine.get("").request_cost((image,))
        assert cost.decoding == decoded_bytes(2000, 2000)
        answer = asyncio.create_task(engine.classify(classify(image)))
        assert await poll_until(lambda: backend.runs_started == 1)
        # Held while the model runs: the payload and the model input, not the decoded pixels.
        assert engine.budget.used == cost.nbytes - cost.decoding
        backend.gate.set()
        await answer
        assert engine.budget.used == 0
    finally:
        backend.gate.set()
        await engine.stop(drain=False)


@pytest.fixture
async def engine_with_budget() -> AsyncIterator[Engine]:
    engine, _ = fake_engine(settings={"memory_budget_bytes": 64 * MIB})
    engine.start(asyncio.get_running_loop())
    try:
        yield engine
    finally:
        await engine.stop(drain=False)


async def test_stream_frames_are_charged_their_decoding_only_as_it_happens(
    engine_with_budget: Engine, opened: list[int]
) -> None:
    model = engine_with_budget.get("")
    image = encoded(3000, 2000)
    charged_now = model.request_cost((image,), decoding=False)
    assert charged_now.decode == (0,) and charged_now.decoding == 0
    assert model.request_cost((image,)).nbytes - charged_now.nbytes == decoded_bytes(3000, 2000)

    async def one_frame() -> AsyncIterator[StreamFrame]:
        yield StreamFrame(inputs=(image,), request_id="f")

    # Beside 40 MiB of other work the frame's decoding does not fit: a stream frame is read and admitted, and
    # refused busy only when its decoding is charged, as it is decoded (a unary request: before, see above).
    with engine_with_budget.budget.lease(40 * MIB):
        async with engine_with_budget.open_stream() as stream:
            (result,) = [r async for r in stream.run(one_frame())]
    assert isinstance(result.error, OverloadedError)
    assert opened == [1]
    assert engine_with_budget.budget.used == 0


# -- _gather_all: how a request awaits its samples ------------------------------------------------
async def test_gathering_futures_starts_no_task_and_keeps_plain_values_in_place() -> None:
    """A request's futures are awaited as they are: a coroutine wrapped around each made gather start a
    task per sample, on every request."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    created: list[object] = []
    original = loop.create_task

    def counting(coro: object, **kwargs: object) -> asyncio.Task[object]:
        created.append(coro)
        return original(coro, **kwargs)  # type: ignore[arg-type]

    gathered = asyncio.ensure_future(model_module._gather_all([futures[0], ["plain"], futures[1], futures[2]]))
    loop.create_task = counting  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0)  # let the gather start: it is waiting on the futures now
        created_by_gather = list(created)
        for index, future in enumerate(futures):
            future.set_result(index)
        assert await gathered == [0, ["plain"], 1, 2]
    finally:
        del loop.create_task
    assert created_by_gather == []


async def test_gathering_awaits_every_future_and_raises_the_first_failure_in_order() -> None:
    loop = asyncio.get_running_loop()
    first, second, third = (loop.create_future() for _ in range(3))
    third.set_exception(ValueError("third"))
    second.set_exception(KeyError("second"))
    first.set_result("ok")
    with pytest.raises(KeyError, match="second"):
        await model_module._gather_all([first, second, third])
    # Every exception was retrieved: none is left to be logged as "never retrieved".
    assert third.done() and second.done()
    assert isinstance(third.exception(), ValueError)


async def test_gathering_nothing_awaitable_returns_the_values() -> None:
    assert await model_module._gather_all([[1], [2]]) == [[1], [2]]
