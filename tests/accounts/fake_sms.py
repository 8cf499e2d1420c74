"""A local stand-in for the SMS providers' HTTP APIs, on a free port, for one test."""

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes

    @property
    def form(self) -> dict:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class FakeProvider:
    """Answers every request with ``status`` and ``reply`` (JSON) and records it."""

    status: int = 200
    reply: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    url: str = ""


class _Handler(BaseHTTPRequestHandler):
    provider: FakeProvider

    def _handle(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        parts = urlsplit(self.path)
        self.provider.requests.append(
            Recorded(
                method=self.command,
                path=parts.path,
                query={k: v[0] for k, v in parse_qs(parts.query).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )
        data = json.dumps(self.provider.reply).encode()
        self.send_response(self.provider.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, *args):
        pass


def start_fake(provider: FakeProvider):
    handler = type("Handler", (_Handler,), {"provider": provider})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    provider.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server
