"""Time parsing and formatting at the edges; inside, times are epoch milliseconds (UTC)."""
from __future__ import annotations

import datetime as _dt
import time
from typing import Union

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

UNIT_MS = {"minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}


def parse_timestamp_ms(value: Union[str, int, float, _dt.datetime, _dt.date]) -> int:
    """ISO-8601 text (``Z`` or offset; naive means UTC), epoch milliseconds, or a datetime.

    Raises ValueError with a short reason for anything else (booleans included).
    """
    if isinstance(value, bool):
        raise ValueError(f"timestamp must be ISO-8601 text or epoch milliseconds, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"timestamp is not a finite number: {value!r}")
        return int(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return (value - _EPOCH) // _dt.timedelta(milliseconds=1)
    if isinstance(value, _dt.date):
        return parse_timestamp_ms(_dt.datetime(value.year, value.month, value.day))
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
        return parse_timestamp_ms(parsed)
    raise ValueError(f"timestamp must be ISO-8601 text or epoch milliseconds, got {type(value).__name__}")


def format_qualification_time(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC, seconds precision) as export records carry it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def format_iso_ms(ms: int) -> str:
    """Millisecond-precision ISO text for logs and dead letters."""
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000
