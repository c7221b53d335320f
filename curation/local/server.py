"""Serve a store over HTTP, as AHI's REST-JSON API, for the AWS CLI and any SDK, as a real endpoint behaves.

``run_server(store_path)`` blocks and prints the endpoint URL and how to sign for it (Ctrl-C stops it);
``serving(store_path)`` runs a server on a free port in a background thread for tests and notebooks. Both
listen on 127.0.0.1 unless told otherwise. What a request goes through, in order (each refusal is an
AWS-style error, ``x-amzn-ErrorType`` and a JSON ``message``, and one log line; never a traceback or HTML):

1. The connection: a fixed pool of ``workers`` threads answers requests; kept-alive connections wait for
   their next request in a selector, holding no thread; beyond ``connections`` open ones a new connection is
   answered 503 at once; every read waits at most ``read_timeout`` and a whole request must arrive within
   ``request_timeout`` (408 otherwise); an idle connection is closed after ``idle_timeout``. A TLS
   handshake on this plain-HTTP port, a bad request line, ``Content-Length: abc`` or a bad chunk size is a 400.
2. The Host header must name the server: the address it is bound to (``localhost`` too for loopback), or a
   name given with ``allowed_hosts`` (403 ``AccessDeniedException``), so a web page reaching it through DNS
   rebinding is refused. ``runtime-<name>`` is accepted as well: botocore prefixes it to the image-set
   operations (``hostPrefix`` in the model) unless host prefix injection is turned off.
3. The body: at most what the operation's input shape allows (:mod:`curation.local.limits`), refused before
   it is read (413 ``RequestEntityTooLargeException``).
4. The signature: SigV4 with the server's key pair (:mod:`curation.local.auth`), unless started with
   ``auth=False`` (``serve --no-auth``).
5. The operation: :func:`curation.local.wire.handle_http`, as the in-process client does.

Clients: see the README section "Using the embedded service from the AWS CLI" (AWS CLI v1 and v2, boto3, the
JavaScript SDK v3: credentials, region, and turning off the ``runtime-`` host prefix).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import logging
import queue
import select
import selectors
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson

from curation.local.auth import TEST_CREDENTIALS, Credentials, SigV4Verifier, generate_credentials
from curation.local.inprocess import make_service
from curation.local.limits import FLOOR_BYTES, ServerLimits, max_body_bytes
from curation.local.service import Service
from curation.local.wire import WireError, handle_http, match_route, parse_query

logger = logging.getLogger(__name__)

_REASONS = {status: reason for status, reason in http.client.responses.items()}
_ERROR_CODES = {
    400: "ValidationException",
    408: "RequestTimeoutException",
    413: "RequestEntityTooLargeException",
    414: "RequestURITooLongException",
    431: "RequestHeaderFieldsTooLargeException",
    501: "UnknownOperationException",
    503: "ServiceUnavailableException",
    505: "HTTPVersionNotSupportedException",
}
_TLS_HANDSHAKE = 0x16


class Endpoint(str):
    """The endpoint URL of a running server (a ``str``), with its ``service`` (knobs for tests) and the
    ``credentials`` requests must be signed with (None when authentication is off)."""

    service: Service
    credentials: Credentials | None

    def __new__(cls, url: str, service: Service, credentials: Credentials | None) -> Endpoint:
        endpoint = super().__new__(cls, url)
        endpoint.service = service
        endpoint.credentials = credentials
        return endpoint


def error_bytes(status: int, code: str, message: str, *, close: bool = True) -> bytes:
    """A complete HTTP/1.1 error response as AWS rest-json services send one."""
    body = orjson.dumps({"message": message})
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"x-amzn-ErrorType: {code}",
        f"Content-Length: {len(body)}",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _Refusal(Exception):
    """A request refused before the operation: answered with ``error`` and the connection closed."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class _Idle(Exception):
    """No request arrived on a kept-alive connection in time: close it."""


class _DeadlineReader(io.RawIOBase):
    """The socket's bytes, each read bounded by ``read_timeout`` and all of one request by its deadline."""

    def __init__(self, sock: socket.socket, limits: ServerLimits) -> None:
        self._sock = sock
        self._limits = limits
        self.probing = False
        self.restart()

    def restart(self, started: bool = False) -> None:
        """A new request begins: a new deadline; ``started`` when bytes of it are already buffered."""
        self.deadline = time.monotonic() + self._limits.request_timeout
        self.started = started

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self.probing:
            return None  # non-blocking probe: "no data yet"
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError("the request did not arrive in time")
            self._sock.settimeout(min(self._limits.read_timeout, remaining))
            count = self._sock.recv_into(buffer)
        except TimeoutError:
            if not self.started:  # an idle keep-alive connection: closed without a word, as servers do
                raise _Idle() from None
            raise _Refusal(
                408, "RequestTimeoutException", "The request did not arrive within the server's timeouts"
            ) from None
        self.started = self.started or count > 0
        return count


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ahi-curation-local"
    # set on the subclass made for each server
    service: Service
    verifier: SigV4Verifier | None
    allowed_hosts: frozenset[str]
    limits: ServerLimits

    def __init__(self, request: socket.socket, client_address: Any, server: socketserver.BaseServer) -> None:
        """Set the connection up only: the server calls :meth:`serve_one` for each request that arrives."""
        self.request, self.client_address, self.server = request, client_address, server
        self.command, self.path = "-", "-"
        self._checked_tls = False
        self.setup()

    def serve_one(self) -> bool:
        """Answer the request waiting on this connection; True when the connection stays open for another."""
        self.close_connection = True
        if not self._checked_tls:
            self._checked_tls = True
            if self._is_tls():
                return False
        self.handle_one_request()
        return not self.close_connection

    def has_buffered_request(self) -> bool:
        """Whether bytes of a next (pipelined) request are already buffered, without waiting for any."""
        self._reader.probing = True
        try:
            return bool(self._buffered.peek(1))
        finally:
            self._reader.probing = False

    def close(self) -> None:
        """Finish the connection (flush, close the files and the socket)."""
        with contextlib.suppress(OSError):
            self.finish()

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # headers and body go out as two writes: no Nagle delay between them
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = _DeadlineReader(self.connection, self.limits)
        self._buffered = io.BufferedReader(self._reader, 65536)
        self._first_pending = False
        self.rfile = self._buffered

    # ------------------------------------------------------------------------------ framing

    def _refuse(self, status: int, code: str, message: str) -> None:
        logger.warning(
            "%s %s %s refused: %s %s: %s", self.client_address[0], self.command, self.path, status, code, message
        )
        with contextlib.suppress(OSError):
            self.wfile.write(error_bytes(status, code, message))
            self.wfile.flush()
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's framing errors (bad request line, headers too long ...) as AWS-style JSON errors."""
        self.command = self.command or "-"
        self.path = getattr(self, "path", "-") or "-"
        self._refuse(code, _ERROR_CODES.get(code, "ValidationException"), message or _REASONS.get(code, "Bad request"))

    def _is_tls(self) -> bool:
        """Refuse a TLS handshake on this plain-HTTP port (the first byte of a TLS record is 0x16)."""
        try:
            first = self._buffered.peek(1)[:1]
        except (_Idle, _Refusal, OSError):
            return True
        self._first_pending = bool(first)
        if first and first[0] == _TLS_HANDSHAKE:
            self._refuse(400, "ValidationException", "This endpoint speaks plain HTTP: a TLS handshake was received")
            return True
        return not first

    def handle_one_request(self) -> None:
        self._reader.restart(started=self._first_pending)
        self._first_pending = False
        try:
            super().handle_one_request()
        except _Idle:
            logger.debug("%s: idle connection closed", self.client_address[0])
            self.close_connection = True
        except _Refusal as refusal:
            self._refuse(refusal.status, refusal.code, refusal.message)

    def _content_length(self, limit: int) -> int:
        text = self.headers.get("Content-Length")
        if text is None:
            return 0
        if not text.strip().isdigit():
            raise _Refusal(400, "ValidationException", f"Content-Length {text!r} is not a number of bytes")
        length = int(text)
        if length > limit:
            raise _Refusal(
                413, "RequestEntityTooLargeException", f"The request body ({length} bytes) exceeds {limit} bytes"
            )
        return length

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            size_text = line.split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Refusal(400, "ValidationException", f"Bad chunk size {size_text[:40]!r}") from None
            if size < 0:
                raise _Refusal(400, "ValidationException", "Bad chunk size")
            if size == 0:
                break
            total += size
            if total > limit:
                raise _Refusal(413, "RequestEntityTooLargeException", f"The request body exceeds {limit} bytes")
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _Refusal(400, "ValidationException", "The connection closed inside a chunk")
            chunks.append(chunk)
            self.rfile.readline(1024)
        while self.rfile.readline(1024).strip():  # trailers
            pass
        return b"".join(chunks)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length = self._content_length(limit)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise _Refusal(400, "ValidationException", f"The body ended after {len(body)} of {length} bytes")
        return body

    # ------------------------------------------------------------------------------ the request

    def _check_host(self) -> None:
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.allowed_hosts:
            raise _Refusal(403, "AccessDeniedException", f"Host {host[:80]!r} is not a name of this endpoint")

    def _body_limit(self, path: str, query: str) -> int:
        try:
            route, _ = match_route(self.command, path, parse_query(query))
        except WireError:
            return FLOOR_BYTES
        return max_body_bytes(route.operation.name)

    def _answer(self) -> None:
        path, _, query = self.path.partition("?")
        self._check_host()
        body = self._read_body(self._body_limit(path, query))
        headers = {key.lower(): value for key, value in self.headers.items()}
        if self.verifier is not None:
            try:
                self.verifier.verify(self.command, self.path, headers, body)
            except WireError as error:
                raise _Refusal(error.http_status, error.code, error.message) from None
        status, response_headers, payload = handle_http(
            self.service, self.command, path, query, self.headers.items(), body
        )
        self.send_response(status)
        for key, value in response_headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)


class LocalHTTPServer(socketserver.TCPServer):
    """A TCP server whose requests are answered by a fixed pool of worker threads (no thread per client).

    Accepted and kept-alive connections wait in a selector until their next request arrives (one dispatcher
    thread); a worker answers one request, then hands the connection back. At most ``limits.connections``
    connections are open at once; one more is answered 503 and closed.
    """

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[_Handler], limits: ServerLimits) -> None:
        self.limits = limits
        self.handler = handler
        self._ready: queue.Queue[_Handler | None] = queue.Queue()
        self._parked: queue.Queue[_Handler] = queue.Queue()
        self._open: set[_Handler] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake_read, self._wake_write = socket.socketpair()
        super().__init__(address, handler)
        self._threads = [threading.Thread(target=self._dispatch, name="ahi-local-dispatcher", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"ahi-local-worker-{n}", daemon=True)
            for n in range(limits.workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def service(self) -> Service:
        """The Service answering this server's requests."""
        return self.handler.service

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            full = len(self._open) >= self.limits.connections
        if full:
            logger.warning("%s refused: 503: %d connections are open", client_address[0], self.limits.connections)
            with contextlib.suppress(OSError):
                request.settimeout(0.5)
                request.sendall(error_bytes(503, "ServiceUnavailableException", "The server is busy: retry later"))
            self.shutdown_request(request)
            return
        try:
            connection = self.handler(request, client_address, self)
        except OSError:
            self.shutdown_request(request)
            return
        with self._lock:
            self._open.add(connection)
        self._park(connection)

    def _park(self, connection: _Handler) -> None:
        self._parked.put(connection)
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _drop(self, connection: _Handler) -> None:
        with self._lock:
            self._open.discard(connection)
        connection.close()
        self.shutdown_request(connection.request)

    def _dispatch(self) -> None:
        """Wait for requests on parked connections; hand each ready one to the workers; close idle ones."""
        selector = selectors.DefaultSelector()
        selector.register(self._wake_read, selectors.EVENT_READ)
        idle_since: dict[_Handler, float] = {}
        while not self._stopping.is_set():
            while not self._parked.empty():
                connection = self._parked.get_nowait()
                try:
                    selector.register(connection.request, selectors.EVENT_READ, connection)
                    idle_since[connection] = time.monotonic()
                except (OSError, ValueError):
                    self._drop(connection)
            for key, _ in selector.select(timeout=0.25):
                if key.fileobj is self._wake_read:
                    with contextlib.suppress(OSError):
                        self._wake_read.recv(4096)
                    continue
                selector.unregister(key.fileobj)
                idle_since.pop(key.data, None)
                self._ready.put(key.data)
            deadline = time.monotonic() - self.limits.idle_timeout
            for connection, since in list(idle_since.items()):
                if since < deadline:
                    selector.unregister(connection.request)
                    del idle_since[connection]
                    self._drop(connection)
        for connection in idle_since:
            self._drop(connection)
        selector.close()

    def _work(self) -> None:
        while (connection := self._ready.get()) is not None:
            while True:
                try:
                    keep = connection.serve_one()
                except (ConnectionResetError, BrokenPipeError):  # the client went away: nothing to answer
                    keep = False
                except Exception:  # a handler bug must not kill the worker
                    logger.exception("%s: the connection failed", connection.client_address[0])
                    keep = False
                if not keep or self._stopping.is_set():
                    self._drop(connection)
                    break
                if not (connection.has_buffered_request() or _readable_soon(connection.request)):
                    self._park(connection)  # quiet: wait in the selector, holding no worker
                    break

    def server_close(self) -> None:
        super().server_close()
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        with self._lock:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.request.shutdown(socket.SHUT_RDWR)
        for _ in self._threads:
            self._ready.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._wake_read.close()
        self._wake_write.close()


#: How long a worker waits for a kept-alive connection's next request before handing it to the selector: a
#: busy client's requests then need no hand-over between threads (each costs a GIL switch under load).
_LINGER_SECONDS = 0.05


def _readable_soon(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], _LINGER_SECONDS)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _names_of(host: str) -> set[str]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name: itself, and the names of the addresses it resolves to on this machine
        names = {host.lower()}
        with contextlib.suppress(OSError):
            for *_, sockaddr in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                names |= _names_of(str(sockaddr[0]))
        return names
    names = {str(address)}
    if address.is_loopback:
        names |= {"localhost", "127.0.0.1", "::1"}
    if address.is_unspecified:
        names |= {"localhost", "127.0.0.1", "::1", socket.gethostname().lower(), socket.getfqdn().lower()}
        with contextlib.suppress(OSError):
            names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


def allowed_host_headers(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """Every ``Host`` header value that names a server bound to ``host:port`` (and the ``extra`` names)."""
    names = _names_of(host) | {name.lower() for name in extra}
    names |= {f"runtime-{name}" for name in names if not name.replace(".", "").isdigit() and ":" not in name}
    values = set()
    for name in names:
        spelled = f"[{name}]" if ":" in name else name
        values.add(f"{spelled}:{port}")
        if port == 80:
            values.add(spelled)
    return frozenset(values)


def make_server(
    store_path: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    credentials: Credentials | None = TEST_CREDENTIALS,
    allowed_hosts: Iterable[str] = (),
    limits: ServerLimits | None = None,
    clock: Callable[[], float] = time.time,
    create: bool = True,
    **knobs: Any,
) -> LocalHTTPServer:
    """A server (not yet serving) answering with a Service over ``store_path`` and ``knobs``; requests must be
    signed with ``credentials`` (None: no authentication) for the store's region, at ``clock``'s time."""
    limits = limits or ServerLimits()
    handler: type[_Handler] = type("Handler", (_Handler,), {"limits": limits, "verifier": None})
    server = LocalHTTPServer((host, port), handler, limits)  # bind first: a port in use creates no store
    try:
        service = make_service(store_path, create=create, **knobs)
    except BaseException:
        server.server_close()
        raise
    region = getattr(service.store, "region", "us-east-1")
    handler.service = service
    handler.verifier = SigV4Verifier(credentials, region=region, clock=clock) if credentials is not None else None
    handler.allowed_hosts = allowed_host_headers(host, int(server.server_address[1]), allowed_hosts)
    return server


def url_of(server: socketserver.TCPServer) -> str:
    """The endpoint URL of a bound server."""
    host, port = server.server_address[:2]
    host = str(host)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _how_to_sign(url: str, credentials: Credentials | None, generated: bool, region: str) -> str:
    lines = [f"AHI endpoint: {url}  (Ctrl-C stops it)"]
    if credentials is None:
        lines.append("Authentication is OFF (--no-auth): any process that can reach this port can use the store.")
        return "\n".join(lines)
    if generated:
        lines += [
            f"Requests must be signed (SigV4, region {region}) with this key pair, generated for this run:",
            f"  export AWS_ACCESS_KEY_ID={credentials.access_key}",
            f"  export AWS_SECRET_ACCESS_KEY={credentials.secret_key}",
        ]
    else:
        lines.append(f"Requests must be signed (SigV4, region {region}) with access key {credentials.access_key}.")
    lines += [
        f"  export AWS_DEFAULT_REGION={region} AWS_DISABLE_HOST_PREFIX_INJECTION=true",
        f"  aws medical-imaging list-datastores --endpoint-url {url}",
    ]
    return "\n".join(lines)


def _stop_on_ctrl_c() -> None:
    """Ctrl-C (SIGINT) and SIGTERM stop the server even when this process inherited them ignored or blocked
    (a process started from a test runner's worker, a notebook kernel or ``nohup`` does: POSIX keeps both an
    ignored disposition and the signal mask across exec)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def run_server(
    store_path: Any,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    credentials: Credentials | None = None,
    auth: bool = True,
    **options: Any,
) -> None:
    """Serve ``store_path`` until Ctrl-C or SIGTERM; print the endpoint URL and how to sign for it first.

    ``credentials`` None with ``auth`` generates a key pair for this run; ``auth=False`` serves unsigned
    requests. ``options``: those of :func:`make_server` (``create``, ``allowed_hosts``, ``limits`` ...) and
    the knobs of :class:`~curation.local.service.Service`.
    """
    generated = auth and credentials is None
    key = (credentials or generate_credentials()) if auth else None
    _stop_on_ctrl_c()
    server = make_server(store_path, host, port, credentials=key, **options)
    region = getattr(server.service.store, "region", "us-east-1")
    try:
        print(_how_to_sign(url_of(server), key, generated, region), flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def serving(
    store_path: Any,
    host: str = "127.0.0.1",
    *,
    credentials: Credentials | None = TEST_CREDENTIALS,
    **options: Any,
) -> Iterator[Endpoint]:
    """Serve ``store_path`` on a free port in a background thread; yield the endpoint URL; stop on exit.

    Requests must be signed with ``credentials``: by default :data:`~curation.local.auth.TEST_CREDENTIALS`
    (``local``/``local``, the pair the in-process client and the tests' clients use), or a pair of your own
    (``curation.local.auth.generate_credentials()``); None turns authentication off.
    """
    server = make_server(store_path, host, 0, credentials=credentials, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ahi-local-server", daemon=True
    )
    thread.start()
    try:
        yield Endpoint(url_of(server), server.service, credentials)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
