"""Tornado's HTTP server with the transport answers a public server owes its clients.

- Request headers over `MAX_HEADER_BYTES` get `431 Request Header Fields Too Large` in
  the JSON error envelope.  Tornado reads headers up to `READ_HEADER_BYTES` (beyond that
  it closes the connection, which bounds the memory one request can take) and would
  close the connection without an answer above its limit, so the limit is checked here.
- `Transfer-Encoding: identity` (the "no encoding" of RFC 2616) is read as no transfer
  coding at all instead of a bare 400.
- A body must arrive within `body_timeout` seconds (HTTPServer's own parameter), so a
  body trickled a byte at a time cannot hold a connection forever.
"""

from __future__ import annotations

import json

from tornado import httputil
from tornado.httpserver import HTTPServer

MAX_HEADER_BYTES = 64 * 1024
READ_HEADER_BYTES = 4 * 1024 * 1024


class RefserverHTTPServer(HTTPServer):
    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        return _RequestChecks(super().start_request(server_conn, request_conn), request_conn)


class _RequestChecks(httputil.HTTPMessageDelegate):
    """Runs before the application sees a request: refuses oversized headers, drops
    `Transfer-Encoding: identity`; everything else passes through."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, conn: httputil.HTTPConnection):
        self.delegate = delegate
        self.conn = conn
        self.refused = False

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        size = sum(len(name) + len(value) + 4 for name, value in headers.get_all())
        if size > MAX_HEADER_BYTES:
            self.refused = True
            self._answer_431()
            return None
        if headers.get("Transfer-Encoding", "").strip().lower() == "identity":
            del headers["Transfer-Encoding"]
        return self.delegate.headers_received(start_line, headers)

    def _answer_431(self) -> None:
        body = json.dumps({"error": {"code": 431, "type": "invalid_request_error", "message":
                                     f"request headers are larger than {MAX_HEADER_BYTES // 1024} KiB"}}).encode()
        headers = httputil.HTTPHeaders({"Content-Type": "application/json; charset=utf-8",
                                        "Content-Length": str(len(body)), "Connection": "close"})
        self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", 431, "Request Header Fields Too Large"),
                                headers, body)
        self.conn.finish()

    def data_received(self, chunk: bytes):
        return None if self.refused else self.delegate.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.delegate.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.delegate.on_connection_close()
