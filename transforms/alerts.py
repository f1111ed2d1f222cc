"""Alerts (docs/semantics.md#kinesis-sink): a log line starting ``ALERT`` and a JSON line in ``<dead_letter>/alerts.jsonl``.

Local roots get a true append to ``alerts.jsonl``; object stores (no append) get one
``alerts-<uuid>.jsonl`` per alert beside it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid

from transforms.timeutil import format_iso_ms, now_ms

LOG = logging.getLogger("kinesis_export.alerts")
_LOCK = threading.Lock()
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def raise_alert(dead_letter_root: str, kind: str, message: str, **fields) -> None:
    LOG.warning("ALERT %s: %s", kind, message)
    line = json.dumps({"time": format_iso_ms(now_ms()), "kind": kind, "message": message, **fields},
                      default=str) + "\n"
    try:
        if _URL.match(dead_letter_root):
            from apache_beam.io.filesystems import FileSystems
            with FileSystems.create(FileSystems.join(dead_letter_root, f"alerts-{uuid.uuid4().hex}.jsonl")) as f:
                f.write(line.encode())
            return
        os.makedirs(dead_letter_root, exist_ok=True)
        with _LOCK, open(os.path.join(dead_letter_root, "alerts.jsonl"), "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as e:  # an alert must never stop the export; the log line above stands
        LOG.error("cannot write alert to %s: %s", dead_letter_root, e)
