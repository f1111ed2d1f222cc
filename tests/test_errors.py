"""One-line causes of filesystem errors, whatever filesystem raised them."""
import pytest
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.filesystem import BeamIOError

from transforms.errors import io_reason


@pytest.mark.parametrize("error, reason", [
    (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
    (BeamIOError("Open failed", {"s3://b/k": PermissionError(13, "Permission denied")}), "Permission denied"),
    (S3ClientError('Could not connect to the endpoint URL: "http://h:9/b/k"', None),
     'Could not connect to the endpoint URL: "http://h:9/b/k"'),
    (ValueError("first line\nsecond line"), "first line"),
    (RuntimeError(), "RuntimeError"),
])
def test_io_reason_is_the_cause_in_one_line(error, reason):
    assert io_reason(error) == reason
