"""A local HTTP proxy in front of moto that injects Kinesis faults, driven by the test.

``proxy.plan`` is a list of actions, one consumed per PutRecords request with records (others
pass):
``("fail", {index: code})`` fails chosen records (they are not forwarded; their entries in the
response carry the error code), ``("status", 500, code)`` answers an error without forwarding,
``"drop"`` closes the connection without an answer, ``"pass"`` forwards untouched.
``proxy.fail_keys`` (partition key -> code) fails every record of those keys, plan or not.

``FakeKinesis`` (below) answers the same plan as a transport, without a server.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.plan = []
        self.fail_keys = {}
        self.put_requests = []   # the records (partition keys) of every PutRecords seen
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target = self.headers.get("X-Amz-Target", "")
                action = "pass"
                keys = [r["PartitionKey"] for r in json.loads(body)["Records"]] if target.endswith(".PutRecords") else []
                if keys:  # the sink's start-up probe (no records) passes untouched
                    proxy.put_requests.append(keys)
                    action = proxy.plan.pop(0) if proxy.plan else "pass"
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(action, tuple) and action[0] == "status":
                    self._answer(action[1], json.dumps({"__type": action[2], "message": f"injected {action[2]}"}).encode())
                    return
                failures = dict(action[1]) if isinstance(action, tuple) and action[0] == "fail" else {}
                failures.update({i: proxy.fail_keys[k] for i, k in enumerate(keys) if k in proxy.fail_keys})
                if failures:
                    doc = json.loads(body)
                    doc["Records"] = [r for i, r in enumerate(doc["Records"]) if i not in failures]
                    body = json.dumps(doc).encode()
                status, data = proxy.forward(self.path, body, self.headers)
                if failures and status == 200:
                    result = json.loads(data)
                    sent = iter(result["Records"])
                    n = len(result["Records"]) + len(failures)
                    result["Records"] = [{"ErrorCode": failures[i], "ErrorMessage": f"injected {failures[i]}"}
                                         if i in failures else next(sent) for i in range(n)]
                    result["FailedRecordCount"] = result.get("FailedRecordCount", 0) + len(failures)
                    data = json.dumps(result).encode()
                self._answer(status, data)

            def _answer(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, path, body, headers):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "connection")}
            conn.request("POST", path, body=body, headers=fwd)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeKinesis:
    """A transport for the sink (``(url, headers, body) -> (status, reply)``) that answers
    PutRecords like Kinesis without a server, with the same ``plan`` actions as ``FaultProxy``
    (``"drop"`` raises a connection error); ``default`` is the action once the plan is used up.

    It notes every request (``requests``: partition keys, ``headers``), what was delivered in
    acknowledgement order, the most requests seen at once, and whether a partition key was ever
    in two requests at once (``overlapping_keys``). ``delay_s`` holds each reply back."""

    def __init__(self, plan=(), default="pass", delay_s=0.0):
        self.plan, self.default, self.delay_s = list(plan), default, delay_s
        self.requests, self.headers, self.delivered = [], [], []
        self.concurrent = self.max_concurrent = 0
        self.concurrency = []  # requests at once as each one started
        self.overlapping_keys = set()
        self._in_flight = set()
        self._lock = threading.Lock()

    def __getstate__(self):  # pickled with a DoFn: the copy starts its own notes
        return {"plan": self.plan, "default": self.default, "delay_s": self.delay_s}

    def __setstate__(self, state):
        self.__init__(state["plan"], state["default"], state["delay_s"])

    def __call__(self, url, headers, body):
        import time
        records = json.loads(body)["Records"]
        keys = [r["PartitionKey"] for r in records]
        with self._lock:
            action = (self.plan.pop(0) if self.plan else self.default) if records else "pass"
            self.requests.append(keys)
            self.headers.append(headers)
            self.overlapping_keys |= self._in_flight & set(keys)
            self._in_flight |= set(keys)
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self.concurrency.append(self.concurrent)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if action == "drop":
                raise ConnectionResetError("injected connection reset")
            if isinstance(action, tuple) and action[0] == "status":
                return action[1], json.dumps({"__type": action[2], "message": f"injected {action[2]}"}).encode()
            failures = action[1] if isinstance(action, tuple) and action[0] == "fail" else {}
            results = []
            with self._lock:
                for i, r in enumerate(records):
                    if i in failures:
                        results.append({"ErrorCode": failures[i], "ErrorMessage": f"injected {failures[i]}"})
                    else:
                        self.delivered.append((r["PartitionKey"], base64.b64decode(r["Data"])))
                        results.append({"SequenceNumber": str(len(self.delivered)), "ShardId": "shardId-000000000000"})
            return 200, json.dumps({"FailedRecordCount": len(failures), "Records": results}).encode()
        finally:
            with self._lock:
                self._in_flight -= set(keys)
                self.concurrent -= 1
