"""The server's logs: keys never reach them (the access log's request line shows ``api_key=***``)."""

from __future__ import annotations

import logging
import re

_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"]*")


class RedactKeys(logging.Filter):
    """Keys never reach the server's log: the access log's request line shows ``api_key=***``
    (the Roboflow clients send the key in the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _KEY_IN_QUERY.sub(r"\1***", record.msg)
        return True


def redact_access_log() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
