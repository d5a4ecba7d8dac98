"""The fake provider's HTTP server: stdlib ``ThreadingHTTPServer``, one thread a connection.

HTTP/1.1 with keep-alive (SDK clients pool connections); every response has a
``Content-Length``. Stopping closes idle keep-alive connections so that ``server_close`` can
join every handler thread: nothing is left running after :meth:`FakeProvider.stop`.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ._openai import error_body

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
MESSAGES_PATHS = frozenset({"/v1/messages", "/messages"})

Send = Callable[[int, Mapping[str, str], bytes], None]
# Answers one parsed chat completion request by calling ``send(status, headers, body)`` once.
ChatEngine = Callable[[dict[str, Any], Send], None]


class Server(ThreadingHTTPServer):
    """A loopback HTTP server whose connections can all be closed at once."""

    daemon_threads = True  # never keeps the interpreter alive ...
    block_on_close = True  # ... but server_close() still joins every handler thread
    request_queue_size = 1024  # the default backlog (5) drops bursts of new connections

    def __init__(self, host: str, port: int, engines: Mapping[str, ChatEngine]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.engines = engines  # by path
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.closing = False
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take
        # seconds on machines without DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def track(self, connection: socket.socket) -> None:
        """Remember an open connection (or close it at once if the server is stopping)."""
        with self._lock:
            self._connections.add(connection)
            if self.closing:
                _shutdown(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a connection its handler has finished with."""
        with self._lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut every open connection down, so their handler threads see EOF and end."""
        with self._lock:
            self.closing = True
            for connection in self._connections:
                _shutdown(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (or our own stop) is not an error worth a traceback.
        if self.closing or isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Routes ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic),
    with or without ``/v1``, to their engines."""

    protocol_version = "HTTP/1.1"
    server_version = "crewthrottle-fake-provider"
    sys_version = ""
    timeout = 60.0  # an idle keep-alive connection is closed after this many seconds
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        engine = self.server.engines.get(path)
        if engine is None:
            self._drain()
            self._send_error(404, f"Unknown request URL: POST {path}.", "unknown_url")
            return
        payload = self._read_json()
        if payload is not None:
            engine(payload, self._send)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self._send_error(404, f"Unknown request URL: GET {path}.", "unknown_url")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a test suite's output is no place for an access log."""

    def _read_json(self) -> dict[str, Any] | None:
        body = self._drain()
        if body is None:
            self._send_error(411, "A Content-Length header is required.", None)
            return None
        try:
            payload = json.loads(body)
        except ValueError:
            self._send_error(400, "We could not parse the JSON body of your request.", None)
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            self._send_error(400, "'messages' is a required property.", None)
            return None
        return payload

    def _drain(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True  # the body's end is unknown: the stream is lost
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _send_error(self, status: int, message: str, code: str | None) -> None:
        body = error_body(message, "invalid_request_error", code)
        self._send(status, {"content-type": "application/json"}, json.dumps(body).encode())

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _shutdown(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass
