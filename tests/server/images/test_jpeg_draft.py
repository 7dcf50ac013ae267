"""JPEG draft decoding: faithful by default (scores within 0.01 of the transformers pipeline on these images; the
worst measured elsewhere is 0.012, docs/models.md), fast on request.

The reference for the shared images is the transformers pipeline (reference-*.json); for the camera-sized
JPEGs made here from them it is the exact path (jpeg_draft off), which matches the pipeline within 1e-6
(tests/server/test_classify.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from imgcls.server.server import RunningServer
from imgcls.v1 import classifier_pb2 as pb
from PIL import Image
from support.inputs import write_open_nsfw_spec
from support.paths import IMAGES
from support.servers import connect, running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIDELITY = 0.01
SHARED_IMAGES = sorted(p.name for p in IMAGES.iterdir() if p.suffix in (".jpg", ".png"))


def camera_jpeg(name: str, long_side: int, quality: int) -> bytes:
    """A shared image scaled to a camera-sized JPEG (Lanczos), as a phone would save it."""
    image = Image.open(IMAGES / name).convert("RGB")
    scale = long_side / max(image.size)
    out = io.BytesIO()
    image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS).save(
        out, "JPEG", quality=quality
    )
    return out.getvalue()


# The camera-sized JPEGs on which the fast mode (1.25x, the default before) moves scores the most.
CAMERA_JPEGS = {
    "rocket 3000x2002 q75": ("rocket.jpg", 3000, 75),
    "rocket 1400x934 q75": ("rocket.jpg", 1400, 75),
    "astronaut 3000x3000 q75": ("astronaut.jpg", 3000, 75),
    "cat 3000x1996 q75": ("cat.jpg", 3000, 75),
    "coffee 2964x1976 q75": ("coffee_1920x1280.jpg", 2964, 75),
    "coffee 4032x2688 q90": ("coffee_1920x1280.jpg", 4032, 90),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, RunningServer]]:
    """One server per mode, each serving both shared models; 'default' sets no jpeg_draft at all."""
    spec = write_open_nsfw_spec(tmp_path_factory.mktemp("models"))
    models = [{"name": "efficientnet-lite0", "source": str(IMAGES.parent / "models" / "efficientnet-lite0")}]
    models.append({"name": "open-nsfw", "source": str(spec)})
    modes: dict[str, dict[str, Any]] = {"default": {}, "fast": {"jpeg_draft": "fast"}, "off": {"jpeg_draft": "off"}}
    running: dict[str, RunningServer] = {}
    contexts = []
    try:
        for mode, overrides in modes.items():
            context = running_server(models=models, **overrides)
            running[mode] = await context.__aenter__()
            contexts.append(context)
        yield running
    finally:
        for context in reversed(contexts):
            await context.__aexit__(None, None, None)


async def scores(server: RunningServer, data: bytes, model: str = "efficientnet-lite0") -> dict[int, float]:
    """Every class's score, by index."""
    request = pb.ClassifyRequest(model=model, inputs=[pb.Input(image=data)])
    request.parameters.top_k = 0
    async with connect(server) as stub:
        response = await stub.Classify(request)
    return {label.index: label.score for label in response.results[0].labels}


def largest_change(got: dict[int, float], want: dict[int, float]) -> float:
    return max(abs(got[index] - score) for index, score in want.items())


@pytest.mark.parametrize("model", ["efficientnet-lite0", "open-nsfw"])
@pytest.mark.parametrize("name", SHARED_IMAGES)
async def test_default_settings_match_the_reference_pipeline_on_every_shared_image(
    servers: dict[str, RunningServer], name: str, model: str
) -> None:
    reference = json.loads((IMAGES / f"reference-{model}.json").read_text())[name]
    got = await scores(servers["default"], (IMAGES / name).read_bytes(), model)
    want = {entry["index"]: entry["score"] for entry in reference}
    assert largest_change(got, want) <= FIDELITY
    assert max(got, key=got.__getitem__) == reference[0]["index"]


@pytest.mark.parametrize("image", sorted(CAMERA_JPEGS))
async def test_default_settings_stay_within_001_on_camera_sized_jpegs(
    servers: dict[str, RunningServer], image: str
) -> None:
    data = camera_jpeg(*CAMERA_JPEGS[image])
    exact = await scores(servers["off"], data)
    assert largest_change(await scores(servers["default"], data), exact) <= FIDELITY


async def test_fast_moves_camera_sized_scores_more_than_the_default(servers: dict[str, RunningServer]) -> None:
    # The trade documented in the README: fast decodes a 3000x2002 photo at 1/8 scale and moves a score by
    # about 0.03, the default at 1/4 by about 0.002.
    data = camera_jpeg(*CAMERA_JPEGS["rocket 3000x2002 q75"])
    exact = await scores(servers["off"], data)
    fast = largest_change(await scores(servers["fast"], data), exact)
    default = largest_change(await scores(servers["default"], data), exact)
    assert fast > FIDELITY > default


async def test_off_is_exact(servers: dict[str, RunningServer]) -> None:
    reference = json.loads((IMAGES / "reference-efficientnet-lite0.json").read_text())["coffee_1920x1280.jpg"]
    got = await scores(servers["off"], (IMAGES / "coffee_1920x1280.jpg").read_bytes())
    assert largest_change(got, {entry["index"]: entry["score"] for entry in reference}) < 1e-5
