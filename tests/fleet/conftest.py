from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from tests.fleet.helpers import remove_photo_files


@pytest.fixture(autouse=True)
def _no_photo_files_left(app: Flask) -> Iterator[None]:
    yield
    remove_photo_files(app)
