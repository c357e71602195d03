"""A loopback HTTP proxy that forwards POSTs to a server and counts the bytes each request carried.

It stands between the offload client and the worker's local API to measure what an offloaded click
costs on the wire (request line, headers and body: everything the client uploads).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import requests

from tests.support import running_server

FORWARD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Exchange:
    path: str
    sent: int  # bytes the client sent: request line, headers, body
    received: int  # bytes of the answer's body


@dataclass
class CountingProxy:
    target: str
    port: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """A position in the log, for `sent_since`."""
        with self._lock:
            return len(self.exchanges)

    def sent_since(self, mark: int) -> int:
        with self._lock:
            return sum(exchange.sent for exchange in self.exchanges[mark:])

    def paths_since(self, mark: int) -> list[str]:
        with self._lock:
            return [exchange.path for exchange in self.exchanges[mark:]]

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)


@contextmanager
def counting_proxy(target: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(target.rstrip("/"))
    session = requests.Session()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            header_bytes = len(self.requestline) + 2 + len(self.headers.as_bytes())
            forwarded = {
                name: value
                for name, value in self.headers.items()
                if name.lower() not in ("host", "content-length")
            }
            answer = session.post(
                f"{proxy.target}{self.path}", data=body, headers=forwarded, timeout=FORWARD_TIMEOUT_S
            )
            proxy.record(Exchange(self.path.split("?")[0], header_bytes + len(body), len(answer.content)))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: object) -> None:
            return

    with running_server(Handler) as port:
        proxy.port = port
        yield proxy
