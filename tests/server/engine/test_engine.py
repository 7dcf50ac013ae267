"""The engine without any transport: admission, observation, readiness, describe, failures and streams.

Models run on a fake backend (support/fake_backend.py) whose scores are known in advance.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from imgcls.server.domain.errors import (
    ErrorKind,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)
from imgcls.server.domain.types import (
    ClassifyOptions,
    ClassifyRequest,
    EncodedImage,
    FunctionToApply,
    TensorDType,
    TensorInput,
)
from imgcls.server.engine.budget import Lease
from imgcls.server.engine.engine import MAX_REQUEST_ID_CHARS, Engine
from imgcls.server.engine.observation import RequestRecord
from imgcls.server.engine.streams import StreamFrame
from PIL import Image
from support.fake_backend import LABELS, SAMPLE_SHAPE, expected_scores, fake_engine


def tensor(batch: int = 1, value: float = 1.0) -> TensorInput:
    data = np.full((batch, *SAMPLE_SHAPE), value, dtype=np.float32)
    return TensorInput(dims=data.shape, dtype=TensorDType.FLOAT32, raw_data=data.tobytes())


def png(color: tuple[int, int, int] = (255, 0, 0)) -> EncodedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue())


def request(*inputs: object, model: str = "", **options: object) -> ClassifyRequest:
    return ClassifyRequest(model=model, inputs=tuple(inputs), options=ClassifyOptions(**options))  # type: ignore[arg-type]


def recorded(engine: Engine) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    engine.add_request_listener(records.append)
    return records


async def test_classify_ranks_the_backend_scores(engine: Engine) -> None:
    answer = await engine.classify(request(tensor(value=0.5), function_to_apply=FunctionToApply.NONE))
    assert answer.model == "fake"
    (ranking,) = answer.rankings
    total = 0.5 * np.prod(SAMPLE_SHAPE)
    assert [(s.label, s.index) for s in ranking] == [("c", 2), ("b", 1), ("a", 0)]
    assert [s.score for s in ranking] == pytest.approx([3 * total, 2 * total, total])


async def test_a_tensor_batch_gives_one_result_per_row_and_images_go_through_preprocessing(engine: Engine) -> None:
    answer = await engine.classify(request(tensor(batch=3), png((255, 255, 255)), png((0, 0, 0))))
    assert len(answer.rankings) == 5
    # White rescales to 1.0 everywhere, black to 0: softmax (the default for 3 labels) of known scores.
    white = expected_scores(np.ones((1, *SAMPLE_SHAPE), dtype=np.float32))[0]
    softmax = np.exp(white - white.max()) / np.exp(white - white.max()).sum()
    assert [s.score for s in answer.rankings[3]] == pytest.approx(sorted(softmax, reverse=True))
    assert [s.score for s in answer.rankings[4]] == pytest.approx([1 / 3] * 3)


async def test_score_returns_the_raw_outputs(engine: Engine) -> None:
    answer = await engine.score(request(tensor(batch=2, value=0.25)))
    assert answer.outputs.shape == (2, len(LABELS))
    np.testing.assert_allclose(answer.outputs, expected_scores(np.full((2, *SAMPLE_SHAPE), 0.25, np.float32)))


async def test_every_request_is_observed_by_every_listener(engine: Engine) -> None:
    first, second = recorded(engine), recorded(engine)
    with engine.observe("test-door", "Classify", "", "req-1", 1) as call:
        await engine.classify(request(tensor()), call=call)
    with pytest.raises(InvalidInputError), engine.observe("test-door", "Classify", "fake", "req-2", 0) as call:
        await engine.classify(request(), call=call)
    assert first == second
    ok, bad = first
    assert (ok.protocol, ok.method, ok.model, ok.request_id, ok.inputs, ok.results) == (
        "test-door",
        "Classify",
        "fake",
        "req-1",
        1,
        1,
    )
    assert ok.outcome is None and ok.outcome_name == "ok" and ok.seconds > 0
    assert bad.outcome is ErrorKind.INVALID_INPUT and bad.results == 0


async def test_unknown_model_is_not_found_and_observed_under_one_label(engine: Engine) -> None:
    records = recorded(engine)
    with pytest.raises(ModelNotFoundError) as caught:
        await engine.classify(request(tensor(), model="x" * 10_000))
    assert "served models: fake" in caught.value.message
    assert len(caught.value.message) < 300  # the caller's huge name is cut, the served list is kept
    assert records[-1].model == "_unknown" and records[-1].outcome is ErrorKind.NOT_FOUND


async def test_a_long_request_id_is_refused_at_every_entrance_and_recorded_only_capped(engine: Engine) -> None:
    records = recorded(engine)
    long_id = "r" * (MAX_REQUEST_ID_CHARS + 1)
    expected = f"request_id: {MAX_REQUEST_ID_CHARS + 1} characters, over the limit of {MAX_REQUEST_ID_CHARS}"
    long_request = ClassifyRequest(model="", inputs=(tensor(),), request_id=long_id)
    for entrance in (engine.classify, engine.score):  # without a call: they observe, and check, themselves
        with pytest.raises(InvalidInputError) as caught:
            await entrance(long_request)
        assert caught.value.message == expected
    # A door that learns the id from the body, after observe() began.
    with pytest.raises(InvalidInputError) as caught, engine.observe("test-door", "Classify", "") as call:
        call.set_request_id(long_id)
    assert caught.value.message == expected
    assert [(r.request_id, r.outcome) for r in records] == [
        (long_id[:MAX_REQUEST_ID_CHARS], ErrorKind.INVALID_INPUT)
    ] * 3


async def test_a_plainly_invalid_request_is_refused_as_invalid_not_busy_at_every_entrance(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy(nbytes: int, owner: str = "") -> Lease:
        raise OverloadedError("server busy")

    monkeypatch.setattr(engine.budget, "lease", busy)
    with pytest.raises(OverloadedError):  # the budget really is busy
        await engine.classify(request(tensor()))
    too_many = request(*[tensor()] * (engine.settings.max_inputs_per_request + 1))
    for entrance in (engine.classify, engine.score):
        with pytest.raises(InvalidInputError, match="over the limit of"):
            await entrance(too_many)
    async with engine.open_stream("test-door") as stream:
        (result,) = [r async for r in stream.run(frames(StreamFrame(inputs=too_many.inputs, request_id="f")))]
    assert result.error is not None and result.error.kind is ErrorKind.INVALID_INPUT


async def test_a_served_model_called_directly_still_checks_the_request(engine: Engine) -> None:
    model = engine.get("fake")
    with pytest.raises(InvalidInputError, match="request has no inputs"):
        await model.run(())
    with pytest.raises(InvalidInputError, match="request has no inputs"):
        await model.classify((), ClassifyOptions())
    with pytest.raises(InvalidInputError, match="top_k"):
        await model.classify((tensor(),), ClassifyOptions(top_k=-1))


async def test_shutdown_refuses_new_work_at_every_entrance_and_tells_readiness_listeners(engine: Engine) -> None:
    heard: list[bool] = []
    engine.add_readiness_listener(heard.append)
    records = recorded(engine)
    assert engine.ready
    engine.begin_shutdown()
    assert heard == [False] and not engine.ready
    # One source of readiness: descriptions (GetModel, v2 ModelReady) say so too.
    assert not engine.describe("fake").ready and not engine.model_ready("fake")
    with pytest.raises(UnavailableError, match="shutting down"):
        await engine.classify(request(tensor()))
    with pytest.raises(UnavailableError, match="shutting down"):
        await engine.score(request(tensor()))
    with pytest.raises(UnavailableError, match="shutting down"):
        async with engine.open_stream("test-door"):
            pass
    with pytest.raises(UnavailableError):
        engine.admit()
    assert [r.outcome for r in records] == [ErrorKind.UNAVAILABLE, ErrorKind.UNAVAILABLE]


async def test_describe_tells_what_the_model_is_without_the_servers_paths(engine: Engine) -> None:
    await engine.classify(request(tensor(batch=2)))
    described = engine.describe("fake")
    assert described.name == "fake" and described.labels == LABELS and described.num_labels == 3
    assert (described.input_name, described.input_shape, described.input_dtype) == (
        "pixel_values",
        (None, *SAMPLE_SHAPE),
        "float32",
    )
    assert (described.layout, described.output_name) == ("NCHW", "logits")
    assert described.source == "fake"  # the folder's name: /nonexistent/models is the server's business
    assert described.default_function is FunctionToApply.SOFTMAX
    assert described.batching.max_batch_size == 4 and described.batching.instances == 1
    assert described.runtime.providers == ("FakeExecutionProvider",)
    assert described.ready and described.preprocessing["size"] == {"height": 4, "width": 4}
    stats = engine.stats("fake")
    assert (stats.requests, stats.failed_requests, stats.inputs) == (1, 0, 2)
    assert sum(stats.batch_size_counts.values()) == stats.batches >= 1


async def test_a_failing_backend_fails_only_its_batch_as_internal() -> None:
    engine, backends = fake_engine()
    engine.start(asyncio.get_running_loop())
    try:
        backends["fake"].fail = RuntimeError("kaput")
        records = recorded(engine)
        with pytest.raises(InferenceError, match="inference failed: kaput"):
            await engine.classify(request(tensor()))
        assert records[-1].outcome is ErrorKind.INTERNAL
        backends["fake"].fail = None
        answer = await engine.classify(request(tensor()))
        assert len(answer.rankings) == 1 and engine.ready
    finally:
        await engine.stop(drain=False)


async def test_a_crashed_batcher_turns_the_engine_not_ready_and_listeners_hear_it() -> None:
    engine, backends = fake_engine()
    heard = asyncio.Event()
    engine.add_readiness_listener(lambda ready: heard.set() if not ready else None)
    engine.start(asyncio.get_running_loop())
    try:
        backends["fake"].fail = SystemExit("a bug killed the inference thread")
        with pytest.raises(UnavailableError, match="batcher stopped"):
            await engine.classify(request(tensor()))
        await asyncio.wait_for(heard.wait(), timeout=10)
        assert not engine.ready and not engine.describe("fake").ready
    finally:
        await engine.stop(drain=False)


async def test_batch_listeners_are_a_list() -> None:
    engine, _ = fake_engine()
    first: list[int] = []
    second: list[int] = []
    model = engine.get("fake")
    model.add_batch_listener(lambda size, queued, compute: first.append(size))
    model.add_batch_listener(lambda size, queued, compute: second.append(size))
    engine.start(asyncio.get_running_loop())
    try:
        await engine.classify(request(tensor()))
        assert first == second == [1]
    finally:
        await engine.stop(drain=False)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls a condition the test cannot await directly (state changed on another thread)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def frames(*items: StreamFrame) -> AsyncIterator[StreamFrame]:
    for item in items:
        yield item


async def test_a_stream_answers_in_order_and_observes_each_frame(engine: Engine) -> None:
    records = recorded(engine)
    bad = StreamFrame(inputs=(), request_id="f2", error=InvalidInputError("inputs[0]: broken"))
    async with engine.open_stream("test-door") as stream:
        assert engine.active_streams == 1
        results = [
            r
            async for r in stream.run(
                frames(
                    StreamFrame(inputs=(tensor(),), request_id="f1", options=ClassifyOptions(top_k=1)),
                    bad,
                    StreamFrame(inputs=(png(),), request_id="f3"),
                )
            )
        ]
    assert engine.active_streams == 0
    assert [r.request_id for r in results] == ["f1", "f2", "f3"]
    assert len(results[0].rankings[0]) == 1 and len(results[2].rankings[0]) == 1  # top_k carried over
    assert results[1].error is not None and results[1].error.kind is ErrorKind.INVALID_INPUT
    assert [(r.method, r.request_id, r.outcome) for r in records] == [
        ("ClassifyStream", "f1", None),
        ("ClassifyStream", "f2", ErrorKind.INVALID_INPUT),
        ("ClassifyStream", "f3", None),
    ]


async def test_queued_inputs_of_two_callers_share_one_run() -> None:
    """The engine merges concurrent callers whatever door they came through (held on a gate, not a clock)."""
    engine, backends = fake_engine()
    gate = threading.Event()
    backends["fake"].gate = gate
    engine.start(asyncio.get_running_loop())
    try:
        first = asyncio.create_task(engine.classify(request(tensor())))
        await until(lambda: backends["fake"].runs_started == 1)
        # The first run is held on the gate; these two queue up behind it and run together.
        others = [asyncio.create_task(engine.classify(request(tensor()))) for _ in range(2)]
        await until(lambda: engine.get("fake").queue_depth == 2)
        gate.set()
        await asyncio.gather(first, *others)
        assert backends["fake"].batches == [1, 2]
    finally:
        gate.set()
        await engine.stop(drain=False)
