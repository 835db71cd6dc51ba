"""A loopback HTTP file server for the download tests: 127.0.0.1 only, byte ranges, a cut on demand."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    range: str | None  # the Range header, e.g. "bytes=100-"


@dataclass
class LoopbackFiles:
    """What the server serves (``files``: path -> bytes), what it was asked (``requests``), where to cut."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the next cut (once)
    honour_ranges: bool = True  # False: answer every request with the whole file, as some servers do

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def serve(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``/path``; returns its URL."""
        self.files["/" + path.lstrip("/")] = data
        return self.url(path)

    def asked(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == "/" + path.lstrip("/")]


def handler_for(state: LoopbackFiles) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            state.requests.append(Request(self.path, self.headers.get("Range")))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if state.honour_ranges and self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            body = data[start:] if cut is None else data[start : start + cut]
            self.wfile.write(body)
            if cut is not None:  # drop the connection with the rest of the promised bytes unsent
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    return Handler


@contextmanager
def loopback_server() -> Iterator[LoopbackFiles]:
    """A running server on a free port of 127.0.0.1 for the duration of the block."""
    state = LoopbackFiles()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url(path: str) -> str:
    """A URL on 127.0.0.1 where nothing listens (a connection there is refused, as offline)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"
