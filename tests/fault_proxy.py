"""A local HTTP proxy in front of moto that injects Kinesis faults, driven by the test.

``proxy.plan`` is a list of actions, one consumed per PutRecords request with records (others
pass):
``("fail", {index: code})`` fails chosen records (they are not forwarded; their entries in the
response carry the error code), ``("status", 500, code)`` answers an error without forwarding,
``"drop"`` closes the connection without an answer, ``"pass"`` forwards untouched.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.plan = []
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
                failures = action[1] if isinstance(action, tuple) and action[0] == "fail" else {}
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
