"""Requests and inputs the tests send, written once."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgcls.v1 import classifier_pb2 as pb

from support.paths import EXAMPLE_SPEC, IMAGES, OPEN_NSFW

COFFEE = (IMAGES / "coffee.jpg").read_bytes()
ESPRESSO = 967  # ImageNet index of "espresso", the reference top-1 for coffee.jpg


def image_input(name: str) -> pb.Input:
    """The shared image `name` as encoded bytes."""
    return pb.Input(image=(IMAGES / name).read_bytes())


def good_request(image: bytes = COFFEE, *, request_id: str = "good") -> pb.ClassifyRequest:
    """One ordinary image (coffee.jpg unless given), which the embedded model answers espresso."""
    return pb.ClassifyRequest(inputs=[pb.Input(image=image)], request_id=request_id)


def write_open_nsfw_spec(parent: Path) -> Path:
    """The shipped example spec beside the shared open-nsfw model, laid out as a user would, under parent."""
    folder = parent / "open-nsfw"
    folder.mkdir()
    shutil.copy(EXAMPLE_SPEC, folder / "open-nsfw.yaml")
    (folder / "model.onnx").symlink_to(OPEN_NSFW / "model.onnx")
    return folder / "open-nsfw.yaml"
