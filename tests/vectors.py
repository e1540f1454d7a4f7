"""Where the official interoperability test vectors live (``../shared/vectors``)."""

import json
import os
from pathlib import Path
from typing import Any

VECTORS = Path(
    os.environ.get(
        "LEAFPDS_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors"
    )
)


def load_json(relative: str) -> Any:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


def load_lines(relative: str) -> list[str]:
    """A line-oriented vector file: skip blank and ``#`` lines, never trim."""
    text = (VECTORS / relative).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line and not line.startswith("#")]
