"""The embedded service's HTTP endpoint under attack: every refusal is AWS-style, logged, and changes nothing.

Each attack of issue 15 is sent over a real socket: large and endless bodies, slow connections, forged,
unsigned and replayed signatures, a foreign Host header, malformed framing. Each test asserts the refusal
(status, ``x-amzn-ErrorType``, a JSON message, a log line), that the server still answers a signed boto3
client, that the process's memory stayed bounded, and that the store's files are byte-identical. Timeouts are
small and set per server (``ServerLimits``); nothing asserts on elapsed time.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from curation.local.auth import TEST_CREDENTIALS, Credentials, generate_credentials, sign_headers
from curation.local.limits import ServerLimits, max_body_bytes
from curation.local.server import serving
from curation.local.store import Store

REFERENCE = Path(__file__).parents[1] / "data" / "reference"
LIMITS = ServerLimits(workers=3, connections=6, read_timeout=0.3, request_timeout=0.6, idle_timeout=0.5)
NO_RETRIES = Config(retries={"total_max_attempts": 1}, inject_host_prefix=False)


class Clock:
    """The server's clock, moved by hand (epoch seconds)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def store_digest(path: Path) -> str:
    """The store's database files, byte for byte (the -shm index is SQLite's shared memory, not data)."""
    digest = hashlib.sha256()
    for name in ("store.sqlite3", "store.sqlite3-wal"):
        file = path / name
        digest.update(file.read_bytes() if file.exists() else b"-")
    return digest.hexdigest()


def boto_client(url: str, credentials: Credentials = TEST_CREDENTIALS, region: str = "us-east-1") -> Any:
    return boto3.session.Session().client(
        "medical-imaging",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=NO_RETRIES,
    )


@pytest.fixture
def served(store_path: Path) -> Iterator[SimpleNamespace]:
    """A store with one imported image set, served with small limits and a hand-moved clock."""
    store = Store(store_path)
    document = json.loads((REFERENCE / "ct-2025-htj2k-1-instance.json").read_text())
    report = store.import_documents([document])
    store.close()
    clock = Clock()
    with serving(store_path, limits=LIMITS, clock=clock) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield SimpleNamespace(
            url=str(url),
            host=host,
            port=int(port),
            clock=clock,
            path=store_path,
            datastore_id=report.datastore_id,
            image_set_id=report.created[0],
            digest=store_digest(store_path),
        )


def exchange(served: SimpleNamespace, data: bytes | list[bytes], *, timeout: float = 10.0) -> bytes:
    """Send raw bytes (or several pieces) on a fresh connection and read until the server closes it."""
    with socket.create_connection((served.host, served.port), timeout=timeout) as sock:
        try:
            for piece in [data] if isinstance(data, bytes) else data:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking everything: read what it said
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse(response: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers (lowercased) and JSON body of the first response in ``response``."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(body)))
    return status, headers, json.loads(body[:length])


def assert_refused(response: bytes, status: int, code: str) -> dict[str, Any]:
    got, headers, body = parse(response)
    assert (got, headers.get("x-amzn-errortype")) == (status, code), (got, headers, body)
    assert headers["content-type"] == "application/json" and isinstance(body["message"], str)
    assert b"Traceback" not in response and b"<html" not in response.lower()
    return body


def assert_unharmed(served: SimpleNamespace) -> None:
    """The server still answers a signed client, and the store did not change."""
    client = boto_client(served.url)
    state = client.get_image_set(datastoreId=served.datastore_id, imageSetId=served.image_set_id)
    assert state["versionId"] == "1"
    assert store_digest(served.path) == served.digest


def request_bytes(
    served: SimpleNamespace, method: str, path: str, body: bytes = b"", *, host: str | None = None, **extra: str
) -> bytes:
    """A signed HTTP/1.1 request as raw bytes, signed for ``host`` (default: the server's address);
    ``extra`` headers are set after signing."""
    host = host or f"{served.host}:{served.port}"
    headers = sign_headers(method, f"http://{host}{path}", body, {"Content-Type": "application/json"})
    headers.update({"Host": host, "Content-Length": str(len(body)), **extra})
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body


def update_path(served: SimpleNamespace) -> str:
    return f"/datastore/{served.datastore_id}/imageSet/{served.image_set_id}/updateImageSetMetadata?latestVersion=1"


# ------------------------------------------------------------------------------------------ bodies


def test_a_huge_declared_body_is_refused_before_it_is_read(served: SimpleNamespace, caplog: Any) -> None:
    before = rss_bytes()
    head = request_bytes(served, "POST", update_path(served), b"", **{"Content-Length": str(10 * 1024**3)})
    body = assert_refused(exchange(served, [head, b"x" * 65536]), 413, "RequestEntityTooLargeException")
    assert str(max_body_bytes("UpdateImageSetMetadata")) in body["message"]
    assert "RequestEntityTooLargeException" in caplog.text
    assert rss_bytes() - before < 32 * 1024**2
    assert_unharmed(served)


def test_a_large_real_body_is_refused_and_memory_stays_bounded(served: SimpleNamespace) -> None:
    before = rss_bytes()
    big = b'{"DICOMUpdates": {"updatableAttributes": "' + b"A" * (200 * 1024**2) + b'"}}'
    head = request_bytes(served, "POST", update_path(served), b"", **{"Content-Length": str(len(big))})
    assert_refused(exchange(served, [head, big]), 413, "RequestEntityTooLargeException")
    del big
    assert rss_bytes() - before < 32 * 1024**2 + 0  # the 200 MB was the client's, never the server's
    assert_unharmed(served)


def test_an_endless_chunked_body_is_cut_at_the_limit(served: SimpleNamespace) -> None:
    head = request_bytes(served, "POST", update_path(served), b"", **{"Transfer-Encoding": "chunked"})
    head = head.replace(b"Content-Length: 0\r\n", b"")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    limit = max_body_bytes("UpdateImageSetMetadata")
    pieces = [head] + [chunk] * (4 * limit // 0x10000 + 64)  # far more than the limit, and no last chunk
    assert_refused(exchange(served, pieces), 413, "RequestEntityTooLargeException")
    assert_unharmed(served)


# ------------------------------------------------------------------------------------------ slow clients


def test_slow_connections_are_timed_out_and_threads_stay_bounded(served: SimpleNamespace) -> None:
    baseline = threading.active_count()
    slow = []
    for _ in range(40):  # far more than the connections allowed
        sock = socket.create_connection((served.host, served.port), timeout=10)
        sock.sendall(b"POST /datastore HTTP/1.1\r\nHost: ")  # ... and never the rest
        slow.append(sock)
    assert threading.active_count() <= baseline + 1  # a fixed pool: no thread per connection
    answers = []
    for sock in slow:  # each connection is answered: 503 at once (pool full) or 408 once its time is up
        with sock:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        answers.append(parse(data)[0])
    assert set(answers) <= {408, 503} and 408 in answers and 503 in answers
    assert threading.active_count() <= baseline + 1
    assert_unharmed(served)


def test_an_idle_kept_alive_connection_is_closed_without_an_answer(served: SimpleNamespace) -> None:
    assert exchange(served, b"") == b""
    assert_unharmed(served)


# ------------------------------------------------------------------------------------------ signatures


def test_unsigned_forged_and_foreign_key_requests_are_refused(served: SimpleNamespace, caplog: Any) -> None:
    path = "/datastore"
    unsigned = f"GET {path} HTTP/1.1\r\nHost: {served.host}:{served.port}\r\n\r\n".encode()
    assert_refused(exchange(served, unsigned), 403, "MissingAuthenticationTokenException")
    signed = request_bytes(served, "GET", path)
    text = signed.decode("latin-1")
    signature = text.split("Signature=")[1][:64]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert_refused(
        exchange(served, text.replace(signature, flipped).encode("latin-1")), 403, "InvalidSignatureException"
    )
    assert_refused(
        exchange(served, text.replace("Authorization: AWS4", "Authorization: AWS3").encode("latin-1")),
        400,
        "IncompleteSignatureException",
    )
    stranger = sign_headers("GET", served.url + path, credentials=generate_credentials())
    head = "".join(f"{key}: {value}\r\n" for key, value in stranger.items())
    foreign = f"GET {path} HTTP/1.1\r\nHost: {served.host}:{served.port}\r\n{head}\r\n".encode("latin-1")
    assert_refused(exchange(served, foreign), 403, "UnrecognizedClientException")
    assert caplog.text.count("refused") >= 4
    assert_unharmed(served)


def test_a_captured_request_cannot_be_replayed_later_or_on_another_body(served: SimpleNamespace) -> None:
    body = json.dumps({"DICOMUpdates": {"updatableAttributes": "eyJTY2hlbWFWZXJzaW9uIjoxLjF9"}}).encode()
    captured = request_bytes(served, "POST", update_path(served), body)
    other = body.replace(b"eyJTY2hlbWFWZXJzaW9uIjoxLjF9", b"eyJTY2hlbWFWZXJzaW9uIjoxLjJ9")
    assert_refused(exchange(served, captured.replace(body, other)), 403, "InvalidSignatureException")
    served.clock.now += 301  # five minutes and a second later
    message = assert_refused(exchange(served, captured), 403, "InvalidSignatureException")["message"]
    assert message.startswith("Signature expired")
    served.clock.now -= 602  # or signed in the future
    message = assert_refused(exchange(served, captured), 403, "InvalidSignatureException")["message"]
    assert message.startswith("Signature not yet current")
    served.clock.now += 301
    assert_unharmed(served)


def test_boto3_with_the_right_key_succeeds_and_with_a_wrong_key_fails(store_path: Path) -> None:
    key = generate_credentials()
    with serving(Store(store_path), credentials=key) as url:
        right = boto_client(url, key)
        created = right.create_datastore(datastoreName="signed")["datastoreId"]
        assert [d["datastoreId"] for d in right.list_datastores()["datastoreSummaries"]] == [created]
        wrong_secret = boto_client(url, Credentials(key.access_key, "not-the-secret"))
        with pytest.raises(ClientError) as refused:
            wrong_secret.list_datastores()
        assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError) as refused:
            boto_client(url, TEST_CREDENTIALS).list_datastores()
        assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
        other_region = boto_client(url, key, region="eu-west-1")
        with pytest.raises(ClientError, match="scoped to a valid region"):
            other_region.list_datastores()


def test_no_auth_serves_unsigned_requests(store_path: Path) -> None:
    with serving(Store(store_path), credentials=None) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        request = f"GET /datastore HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        served = SimpleNamespace(host=host, port=int(port))
        status, _, body = parse(exchange(served, request))
        assert status == 200 and body == {"datastoreSummaries": []}


# ------------------------------------------------------------------------------------------ host and framing


def test_a_foreign_host_header_is_refused(served: SimpleNamespace, caplog: Any) -> None:
    request = request_bytes(served, "GET", "/datastore", host="evil.example.com")  # signed, even
    body = assert_refused(exchange(served, request), 403, "AccessDeniedException")
    assert "evil.example.com" in body["message"] and "AccessDeniedException" in caplog.text
    wrong_port = request_bytes(served, "GET", "/datastore", host=f"{served.host}:{served.port + 1}")
    assert_refused(exchange(served, wrong_port), 403, "AccessDeniedException")
    for name in ("localhost", "127.0.0.1"):  # the names of a loopback server are its own
        signed = request_bytes(served, "GET", "/datastore", host=f"{name}:{served.port}", Connection="close")
        assert parse(exchange(served, signed))[0] == 200
    assert_unharmed(served)


@pytest.mark.parametrize(
    ("name", "raw", "status", "code"),
    [
        (
            "content-length",
            "POST /datastore HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\n",
            400,
            "ValidationException",
        ),
        (
            "negative-length",
            "POST /datastore HTTP/1.1\r\nHost: {host}\r\nContent-Length: -5\r\n\r\n",
            400,
            "ValidationException",
        ),
        (
            "chunk-size",
            "POST /datastore HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
            400,
            "ValidationException",
        ),
        ("request-line", "HELLO\r\n\r\n", 400, "ValidationException"),
        ("http-version", "GET /datastore HTTP/9.9\r\nHost: {host}\r\n\r\n", 505, "HTTPVersionNotSupportedException"),
        (
            "long-header",
            "GET /datastore HTTP/1.1\r\nHost: {host}\r\nX-Big: " + "a" * 70000 + "\r\n\r\n",
            431,
            "RequestHeaderFieldsTooLargeException",
        ),
    ],
)
def test_malformed_framing_gets_an_aws_style_error(
    served: SimpleNamespace, caplog: Any, name: str, raw: str, status: int, code: str
) -> None:
    request = raw.replace("{host}", f"{served.host}:{served.port}").encode("latin-1")
    assert_refused(exchange(served, request), status, code)
    assert "refused" in caplog.text
    assert_unharmed(served)


def test_a_tls_hello_on_the_plain_port_gets_an_aws_style_error(served: SimpleNamespace, caplog: Any) -> None:
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"
    body = assert_refused(exchange(served, hello), 400, "ValidationException")
    assert "TLS" in body["message"] and "TLS" in caplog.text
    assert_unharmed(served)


def test_more_kept_alive_clients_than_workers_are_all_answered(served: SimpleNamespace) -> None:
    """Idle kept-alive connections hold no worker: 5 clients keep connections open, 3 workers answer them all."""
    from concurrent.futures import ThreadPoolExecutor

    clients = [boto_client(served.url) for _ in range(5)]  # connections limit is 6: one left for assert_unharmed

    def calls(client: Any) -> int:
        for _ in range(5):
            client.get_image_set(datastoreId=served.datastore_id, imageSetId=served.image_set_id)
        return 5

    with ThreadPoolExecutor(max_workers=5) as pool:
        assert sum(pool.map(calls, clients)) == 25
    for client in clients:
        client.close()
    assert_unharmed(served)
