"""uvicorn's HTTP protocol with one change: a request the HTTP parser itself refuses (a control
character in a header, a URL past 64 KB, a broken request line) is answered with the
protocol's JSON error too, as everything the application answers is.

Imported only where a server starts (it imports uvicorn)."""

from __future__ import annotations

import json
from typing import Any

try:  # httptools where it is installed (uvicorn's own choice), else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - uvicorn without its [standard] extras
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

MALFORMED = ("malformed HTTP request: the server could not parse it (control characters in a header, "
             "a URL longer than 64 KB, a broken request line?)")


class JsonErrorsProtocol(_Base):  # type: ignore[misc, valid-type]
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"success": False, "error": MALFORMED}).encode()
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()


def http_protocol() -> type[Any]:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    return JsonErrorsProtocol
