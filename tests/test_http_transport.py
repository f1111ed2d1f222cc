"""The sink's default transport (``HttpTransport``) against real local HTTP servers: keep-alive
reuse, an idle connection the endpoint closed, a broken reply, TLS verified against the CA
bundle boto3 would use, and the environment's proxy."""
from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import pickle
import ssl
import threading
import time

import pytest

from transforms.kinesis import HttpTransport

REPLY = b'{"FailedRecordCount":0,"Records":[]}'


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """Answers every POST with ``REPLY``; the server counts connections and requests and holds
    what the test wants: close after the reply, or a reply cut short."""
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.requestline, self.headers.get("Host"), body))
        if self.server.mode == "broken":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)
        if self.server.mode == "close_after_reply":   # no "Connection: close": the client finds out later
            self.close_connection = True

    def finish(self):
        super().finish()
        self.server.finished += 1

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def endpoint(mode="keep_alive", tls_context=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    server.daemon_threads = True
    server.mode, server.connections, server.finished, server.seen = mode, 0, 0, []
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        scheme = "https" if tls_context is not None else "http"
        yield server, f"{scheme}://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_proxy_nor_bundle(monkeypatch, tmp_path):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))   # no profile's ca_bundle either


def _until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_one_connection_per_thread_kept_alive():
    with endpoint() as (server, url):
        transport = HttpTransport()
        for n in range(3):
            assert transport(url, {"X-Amz-Target": "Kinesis_20131202.PutRecords"}, b'{"n":%d}' % n) == (200, REPLY)
        assert server.connections == 1
        assert [body for _, _, body in server.seen] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert server.seen[0][1] == url.split("/")[2]   # Host: what SigV4 signs


def test_a_request_to_another_endpoint_gets_its_own_connection():
    with endpoint() as (first, first_url), endpoint() as (second, second_url):
        transport = HttpTransport()
        for url in (first_url, second_url, first_url):
            assert transport(url, {}, b"{}") == (200, REPLY)
        assert (len(first.seen), len(second.seen)) == (2, 1)


def test_a_connection_the_endpoint_closed_while_idle_is_replaced_before_use():
    with endpoint("close_after_reply") as (server, url):
        transport = HttpTransport()
        assert transport(url, {}, b"{}") == (200, REPLY)
        _until(lambda: server.finished == 1)
        time.sleep(0.05)   # the endpoint's FIN reaches the client
        assert transport(url, {}, b"{}") == (200, REPLY)
        assert server.connections == 2


def test_a_broken_reply_is_a_connection_error_and_the_next_request_reconnects():
    with endpoint("broken") as (server, url):
        transport = HttpTransport()
        with pytest.raises(ConnectionError, match="IncompleteRead"):
            transport(url, {}, b"{}")
        server.mode = "keep_alive"
        assert transport(url, {}, b"{}") == (200, REPLY)
        assert server.connections == 2


def test_connection_refused_is_an_os_error():
    with endpoint() as (_, url):
        pass   # closed: nothing listens there any more
    with pytest.raises(OSError):
        HttpTransport(connect_timeout=2)(url, {}, b"{}")


def test_survives_pickling_as_part_of_the_dofn():
    with endpoint() as (server, url):
        transport = HttpTransport(4, 3, 7)
        transport(url, {}, b"{}")
        copy = pickle.loads(pickle.dumps(transport))
        assert copy._args == (4, 3, 7)
        assert copy(url, {}, b"{}") == (200, REPLY)
        assert server.connections == 2


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 that is its own CA, as a PEM file, and a server context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_pem, key_pem)
    return str(cert_pem), context


def test_tls_is_verified_against_the_ca_bundle_boto3_would_use(tmp_path, monkeypatch):
    cert, context = _self_signed(tmp_path)
    with endpoint(tls_context=context) as (server, url):
        with pytest.raises(ssl.SSLCertVerificationError):   # not in botocore's own bundle
            HttpTransport()(url, {}, b"{}")
        monkeypatch.setenv("AWS_CA_BUNDLE", cert)
        assert HttpTransport()(url, {}, b"{}") == (200, REPLY)
        assert len(server.seen) == 1


def test_the_environments_proxy_carries_the_requests(monkeypatch):
    with endpoint() as (target, url), endpoint() as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        assert HttpTransport()(url, {}, b"{}") == (200, REPLY)
        # a forward proxy is asked for the endpoint's absolute URL
        assert [line for line, _, _ in proxy.seen] == [f"POST {url} HTTP/1.1"]
        assert target.seen == []
