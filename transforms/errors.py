"""The base of errors a user can fix (config, inputs, stream, permissions): the command lines
print them as one line and exit non-zero, without a traceback."""


class UserError(Exception):
    pass


def io_reason(e: Exception) -> str:
    """The cause of a filesystem error in one line, without the wrapping: ``strerror`` of an
    OSError, the cause inside Beam's ``BeamIOError``, the message of an S3 client error."""
    strerror = getattr(e, "strerror", None)
    if strerror:
        return strerror
    causes = getattr(e, "exception_details", None)  # BeamIOError: {path: cause}
    if isinstance(causes, dict) and causes:
        return io_reason(next(iter(causes.values())))
    message = getattr(e, "message", None)  # Beam's S3ClientError(message, code)
    text = message if isinstance(message, str) and message else str(e)
    return (text or type(e).__name__).splitlines()[0]
