"""Shared fixtures: a moto Kinesis server on a free 127.0.0.1 port, streams, a fault proxy."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-2")

REGION = "us-east-2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(env_extra=None):
    """A moto server subprocess on a free loopback port; returns (process, endpoint URL)."""
    port = free_port()
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def moto_server():
    proc, url = start_moto()
    yield url
    stop(proc)


def kinesis_client(endpoint_url, **kw):
    import boto3
    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint_url,
                        aws_access_key_id=kw.get("key", "testing"), aws_secret_access_key=kw.get("secret", "testing"))


@pytest.fixture
def kinesis_stream(moto_server):
    """Creates a fresh stream (name, shards) on the moto server and returns its name."""
    client = kinesis_client(moto_server)

    def create(shards: int = 1) -> str:
        name = f"s-{uuid.uuid4().hex[:10]}"
        client.create_stream(StreamName=name, ShardCount=shards)
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
        return name
    return create


def read_stream(endpoint_url: str, stream: str):
    """Every record of every shard, in shard order: [(partition_key, data bytes), ...]."""
    client = kinesis_client(endpoint_url)
    out = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            page = client.get_records(ShardIterator=it, Limit=10000)
            out.extend((r["PartitionKey"], r["Data"]) for r in page["Records"])
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
    return out


@pytest.fixture
def fault_proxy(moto_server):
    from tests.fault_proxy import FaultProxy
    proxy = FaultProxy(moto_server)
    yield proxy
    proxy.close()
