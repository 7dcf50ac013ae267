"""Where the checkout and the shared test data are: SHARED_DIR, else ../shared beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
EFFICIENTNET = SHARED / "models" / "efficientnet-lite0"
OPEN_NSFW = SHARED / "models" / "open-nsfw"
EXAMPLE_SPEC = ROOT / "examples" / "open-nsfw.yaml"
