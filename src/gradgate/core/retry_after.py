"""How long a server asked to wait before the next request: `retry-after-ms`, or `Retry-After` as seconds or
an HTTP date. Shared by the model backend and the GitHub client, which each apply their own cap."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from typing import Any


def parse_retry_after(headers: Any) -> float | None:
    """Seconds a server asked to wait: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date.

    Infinity stays infinity (the caller refuses to wait that long); nonsense is ignored (None)."""
    if not headers:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            value = float(millis) / 1000
            return None if math.isnan(value) else max(0.0, value)
        raw = headers.get("retry-after")
    except (AttributeError, TypeError, ValueError):
        return None
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        try:
            when = email.utils.parsedate_to_datetime(str(raw))
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        value = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return None if math.isnan(value) else max(0.0, value)
