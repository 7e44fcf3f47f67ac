"""The shared schema blocks: the one pagination helper every keyset-paginated list uses (issue 8 item 7)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from marketplace.errors import Unprocessable
from marketplace.schemas import decode_cursor, decode_id_cursor, paginate


def _rows(n: int) -> list[Any]:
    return [SimpleNamespace(id=10 + i) for i in range(n)]


def test_a_page_asks_one_row_more_and_points_at_its_last_item(app: Flask, app_ctx: None) -> None:
    asked: list[int] = []

    def fetch(n: int) -> list[Any]:
        asked.append(n)
        return _rows(n)

    page = paginate("things", 3, fetch)
    assert asked == [4]
    assert [r.id for r in page.items] == [10, 11, 12]
    assert decode_id_cursor("things", page.next_cursor) == 12
    assert page.out() == {"items": page.items, "page": {"next_cursor": page.next_cursor}}
    assert page.out(lambda r: r.id)["items"] == [10, 11, 12]


@pytest.mark.parametrize("found", [0, 2, 3])
def test_the_last_page_has_no_cursor(app: Flask, app_ctx: None, found: int) -> None:
    page = paginate("things", 3, lambda n: _rows(min(n, found)))
    assert len(page.items) == found and page.next_cursor is None


def test_a_cursor_carries_its_key_and_is_bound_to_its_list(app: Flask, app_ctx: None) -> None:
    page = paginate("search", 1, _rows, key=lambda r: [r.id * 100, r.id])
    assert decode_cursor("search", page.next_cursor) == [1000, 10]
    with pytest.raises(Unprocessable):
        decode_cursor("other-list", page.next_cursor)
