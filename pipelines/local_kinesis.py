"""A local Kinesis endpoint for the demo and the tests: a moto server on a free 127.0.0.1 port,
started as a subprocess and always stopped."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalKinesis:
    """``with LocalKinesis() as kinesis:`` starts moto; ``kinesis.url`` is its endpoint."""

    def __init__(self, env: Optional[Dict[str, str]] = None, region: str = "us-east-2"):
        self.env, self.region = env or {}, region
        self.proc = None
        self.url = None

    def start(self) -> "LocalKinesis":
        port = free_port()
        env = dict(os.environ, AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                   AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"), **self.env)
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the moto server exited at start (is moto[server] installed?)")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    self.url = f"http://127.0.0.1:{port}"
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the moto server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def client(self, key: str = "testing", secret: str = "testing"):
        import boto3
        return boto3.client("kinesis", region_name=self.region, endpoint_url=self.url,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def create_stream(self, name: str, shards: int = 1) -> str:
        client = self.client()
        client.create_stream(StreamName=name, ShardCount=shards)
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
        return name

    def read_stream(self, name: str) -> List[Tuple[str, bytes]]:
        """Every record of every shard: [(partition key, data), ...], shard by shard."""
        client = self.client()
        out = []
        for shard in client.list_shards(StreamName=name)["Shards"]:
            it = client.get_shard_iterator(StreamName=name, ShardId=shard["ShardId"],
                                           ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while it:
                page = client.get_records(ShardIterator=it, Limit=10000)
                out.extend((r["PartitionKey"], r["Data"]) for r in page["Records"])
                if not page["Records"]:
                    break
                it = page.get("NextShardIterator")
        return out
