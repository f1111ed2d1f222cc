"""The runnable jobs (docs/semantics.md#command-lines): backfill, streaming, replay, validate, and the local demo."""
import logging


def _quiet_optional_gcp_warning(record: logging.LogRecord) -> bool:
    # Beam logs this at import on every machine without the GCP extras; it is noise for users
    # of these command lines, who run on Kinesis.
    return "apitools not found" not in record.getMessage()


logging.getLogger().addFilter(_quiet_optional_gcp_warning)
