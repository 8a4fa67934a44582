"""Structured JSON logging with a correlation id per request (``cid``) and per conversation
(``conversation``: its id, the same on every instance and in every request about it).

Log records carry names, ids and numbers. Attribute values, tokens, phone numbers and request
bodies are never passed to a logger in the first place; this module adds no filter that would
invite relying on one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")
conversation_id: ContextVar[str | None] = ContextVar("conversation_id", default=None)


def bind_conversation(conversation: str) -> None:
    """Tag what this request logs from here on with the conversation it is about (a random
    id, never anything of the resident's). Only within a request: a background task (the
    sweeper, the dispatcher) goes through many conversations and names each where it logs."""
    if correlation_id.get() != "-":
        conversation_id.set(conversation)


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
        conversation = conversation_id.get()
        if conversation is not None:
            entry["conversation"] = conversation
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


class TextFormatter(logging.Formatter):
    """One readable line (``log_format = "text"``): the same fields, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(cid)s%(conv)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(vars(record))  # other handlers see the record unchanged
        copy.cid = correlation_id.get()
        conversation = conversation_id.get()
        copy.conv = f" {conversation}" if conversation else ""
        # As in JSON: the exception's class, never its message (messages may quote input).
        copy.exc_info = copy.exc_text = None
        line = super().format(copy)
        if record.exc_info and record.exc_info[0] is not None:
            line += f" exc_type={record.exc_info[0].__name__}"
        return line


def setup_logging(
    level: str = "INFO", fmt: str = "json", levels: Mapping[str, str] | None = None
) -> None:
    """Log to stderr as ``fmt`` at ``level``, with ``levels`` per logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, value in (levels or {}).items():
        logging.getLogger(name).setLevel(value)
    # uvicorn's access log prints query strings (tokens); ours does not, so silence theirs.
    logging.getLogger("uvicorn.access").disabled = True
    quiet_libraries()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.Formatter.converter = time.gmtime
    # Fields no line of ours carries, each costly per record (the Python logging HOWTO,
    # "Optimization"): the caller's file and line (a walk up the stack), thread, process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
