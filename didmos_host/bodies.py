"""Request bodies for every API: whole or refused, and JSON that no input can turn into a 500.

- A body sent without ``Content-Length`` (chunked) is read up to ``api.max_content_length``; werkzeug
  then stops and hands out what it read, so a larger body would be parsed cut off (a truncated JSON
  document, or worse, a shorter one that parses). Such a body is 413 instead, before any route sees it.
- JSON nested deeper than Python's recursion limit made ``json.loads`` raise ``RecursionError`` (500);
  a string with a lone surrogate escape (``"\\udc80"``) parsed, then failed wherever it was encoded as
  UTF-8 (500). Both are now invalid JSON (``ValueError``), which every API answers with 400.
- A query string with raw bytes that are not UTF-8 (not percent-encoded) made ``request.args`` raise
  ``UnicodeDecodeError`` (500) on every route that reads it: 400.
"""

from __future__ import annotations

from typing import Any

import flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, with the two refusals above in ``loads``."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON document is nested too deeply") from None
        _refuse_lone_surrogates(value)
        return value


def _refuse_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"the JSON string {item[:40]!r} holds a lone surrogate (\\ud800-\\udfff "
                                 "without its pair), which is not Unicode text") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def install(app: flask.Flask) -> None:
    """Use :class:`JSONProvider`; refuse query strings that are not UTF-8 and chunked bodies over
    ``MAX_CONTENT_LENGTH``."""
    app.json = JSONProvider(app)

    @app.before_request
    def _whole_body_or_413() -> None:
        request = flask.request
        try:
            request.args  # noqa: B018 - parsed here once, so that no route meets the error
        except UnicodeDecodeError:
            raise BadRequest("the query string is not UTF-8: percent-encode its bytes (RFC 3986)") from None
        limit = request.max_content_length
        if limit is None or request.content_length is not None:
            return  # with Content-Length, werkzeug refuses a larger body itself
        if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
            return
        if len(request.get_data(cache=True)) >= limit:  # cut off at the limit: there may be more
            raise RequestEntityTooLarge(f"the request body has {limit} bytes or more; at most "
                                        f"{limit - 1} are accepted without a Content-Length (api.max_content_length)")
