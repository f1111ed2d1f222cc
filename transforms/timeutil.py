"""Time parsing and formatting at the edges; inside, times are epoch milliseconds (UTC)."""
from __future__ import annotations

import datetime as _dt
import time
from typing import Dict, Union

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


_DAY_S = 86_400
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))
_DATES: Dict[int, str] = {}   # day number since the epoch -> "YYYY-MM-DDT"
_DATES_KEPT = 4096


def format_qualification_time(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` (UTC, seconds precision) as export records carry it; on the
    per-record path, so the date part is formatted once per day and the time of day by table."""
    day, second = divmod(ms // 1000, _DAY_S)
    date = _DATES.get(day)
    if date is None:
        if len(_DATES) >= _DATES_KEPT:
            _DATES.clear()
        date = _DATES[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * _DAY_S))
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{date}{_TWO_DIGITS[hour]}:{_TWO_DIGITS[minute]}:{_TWO_DIGITS[second]}Z"


def format_iso_ms(ms: int) -> str:
    """Millisecond-precision ISO text for logs and dead letters."""
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000
