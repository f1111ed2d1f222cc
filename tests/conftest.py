"""Shared fixtures: a moto Kinesis server on a free 127.0.0.1 port, streams, a fault proxy."""
from __future__ import annotations

import os
import uuid

import pytest

from pipelines.local_kinesis import LocalKinesis

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-2")

REGION = "us-east-2"


def start_moto(env_extra=None):
    """A moto server subprocess on a free loopback port; returns (server, endpoint URL)."""
    server = LocalKinesis(env_extra, REGION).start()
    return server, server.url


def stop(server):
    server.stop()


@pytest.fixture(scope="session")
def moto_server():
    proc, url = start_moto()
    yield url
    stop(proc)


def kinesis_client(endpoint_url):
    import boto3
    return boto3.client("kinesis", region_name=REGION, endpoint_url=endpoint_url)


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
    server = LocalKinesis(region=REGION)
    server.url = endpoint_url
    return server.read_stream(stream)


@pytest.fixture
def fault_proxy(moto_server):
    from tests.fault_proxy import FaultProxy
    proxy = FaultProxy(moto_server)
    yield proxy
    proxy.close()
