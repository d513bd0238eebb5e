"""An OpenAI-only front for a running server: llama.cpp's native routes (and /v1/messages)
answer 404, everything else is forwarded, streams included, and the `Server` header is not
refserver's.  Pointing the suite at it checks that every `openai`-profile test runs against
a server that has nothing but OpenAI's routes: none may fail or skip for a missing route.

    python -m refserver -np 2 --metrics --port 8080 &
    python tools/peers/openai_only.py 127.0.0.1:8080 8090 &
    pytest tests/unit --server-url http://127.0.0.1:8090      # auto: only the openai layer runs
"""

from __future__ import annotations

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NATIVE = ("/props", "/completion", "/completions", "/tokenize", "/detokenize", "/apply-template", "/slots",
          "/metrics", "/infill", "/v1/messages", "/chat/completions", "/models", "/v1/health")
HOP_BY_HOP = {"transfer-encoding", "content-length", "connection", "keep-alive", "server", "date"}


class Front(BaseHTTPRequestHandler):
    """HTTP/1.0: a forwarded body ends when the connection closes, so streams pass as they come."""

    protocol_version = "HTTP/1.0"
    upstream: tuple[str, int] = ("127.0.0.1", 8080)

    def _not_found(self) -> None:
        body = b'{"detail": "Not Found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        path = self.path.split("?", 1)[0]
        if any(path == p or path.startswith(p + "/") for p in NATIVE):
            self._not_found()
            return
        length = int(self.headers.get("Content-Length") or 0)
        conn = http.client.HTTPConnection(*self.upstream, timeout=600)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=self.rfile.read(length) if length else None, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.end_headers()
        while chunk := resp.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()
        conn.close()

    do_GET = do_POST = do_DELETE = do_OPTIONS = do_PUT = do_PATCH = do_HEAD = _forward

    def log_message(self, *args) -> None:  # quiet
        pass


def main(argv: list[str]) -> None:
    if len(argv) != 2 or ":" not in argv[0]:
        sys.exit("usage: openai_only.py UPSTREAM_HOST:PORT LISTEN_PORT")
    host, port = argv[0].rsplit(":", 1)
    Front.upstream = (host, int(port))
    ThreadingHTTPServer(("127.0.0.1", int(argv[1])), Front).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
