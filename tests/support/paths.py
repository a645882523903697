"""Where tests find the repository and the shared datasets (tests that need them skip where
`../shared/data` is absent)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
HOMEDEPOT = SHARED_DATA / "homedepot" / "xc"
COOKING = SHARED_DATA / "cooking" / "xc"
COOKING_FASTTEXT = SHARED_DATA / "cooking" / "cooking.stackexchange.txt"

F = TypeVar("F", bound=Callable[..., object])


def requires_shared_data(test: F) -> F:
    """Mark a test as needing ../shared/data and skip it where that directory is absent."""
    skip = pytest.mark.skipif(
        not SHARED_DATA.is_dir(), reason=f"shared data directory {SHARED_DATA} is absent"
    )
    return pytest.mark.shared_data(skip(test))
