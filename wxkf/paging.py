"""Paging for admin listings: ``?after=<cursor>&limit=<n>``, validated, bounded.

A cursor is the sort key of the last item of the previous page, so each page is one ranged query on
an index (``key > after``, with an explicit upper end: see :func:`wxkf.database.up_to`), never a skip
over what came before.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from wxkf.http import Refusal

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STRING_MAX = "\U0010ffff"  # above every string key: the explicit upper end of :func:`after`
CURSOR = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, as every key the listings give out


def after(cursor: str) -> dict[str, str]:
    """A range query ``> cursor`` on a string key, with both ends (see :func:`wxkf.database.up_to`)."""
    return {"$gt": cursor, "$lt": STRING_MAX}


def page_params(
    request: Request, cursor: re.Pattern[str] = CURSOR, *, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT
) -> tuple[str, int]:
    """``(after, limit)`` from the query; a 400 :class:`~wxkf.http.Refusal` says what is wrong."""
    after = request.query_params.get("after", "")
    if after and not cursor.fullmatch(after):
        raise Refusal(
            400, "bad_page", "after: not a cursor this listing gave out (use the previous page's next)"
        )
    text = request.query_params.get("limit")
    if text is None:
        return after, default
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= most):
        raise Refusal(400, "bad_page", f"limit: a whole number from 1 to {most}")
    return after, int(text)
