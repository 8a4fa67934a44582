"""Structured JSON logging with a correlation id per request.

Log records carry names, ids and numbers. Attribute values, tokens, phone numbers and request
bodies are never passed to a logger in the first place; this module adds no filter that would
invite relying on one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "cid": correlation_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Only the exception class and where it was raised: messages may quote input.
            entry["exc_type"] = record.exc_info[0].__name__
            tb = record.exc_info[2]
            frames = []
            while tb is not None:
                frames.append(f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}")
                tb = tb.tb_next
            entry["exc_where"] = frames[-5:]
        return json.dumps(entry, default=str)


# Libraries that log URLs, SQL parameters or frames at INFO/DEBUG: URLs carry attr_url slots and
# ?result= tokens, SQL parameters carry ciphertexts and hashes. They speak at WARNING only.
CHATTY_LOGGERS = (
    "httpx",
    "httpcore",
    "aiosqlite",
    "sqlalchemy.engine",
    "asyncpg",
    "alembic",
    "websockets",  # frames of the PBX event stream carry caller numbers
)


def quiet_libraries() -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # pysaml2 puts SAML messages (with the BSN) into its error and debug lines: never log them.
    logging.getLogger("saml2").setLevel(logging.CRITICAL + 1)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log prints query strings (tokens); ours does not, so silence theirs.
    logging.getLogger("uvicorn.access").disabled = True
    quiet_libraries()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.Formatter.converter = time.gmtime
