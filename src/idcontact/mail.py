"""Sending e-mail over SMTP, for the contact form's "your answer is ready" notice.

The standard library's client runs in a worker thread (it blocks). The address is personal
data: it is never logged, and a failure is reported by its kind only.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from idcontact.errors import ConfigError, IdContactError


class MailError(IdContactError):
    status = 502
    slug = "mail-failed"
    title = "The e-mail could not be sent"


class SmtpConfig(BaseModel):
    """Where and how to hand mail over: a relay of the municipality."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=587, ge=1, le=65535)
    security: str = Field(default="starttls", pattern="^(starttls|tls|none)$")
    """``starttls`` (port 587), ``tls`` (implicit TLS, port 465) or ``none`` (a local relay
    on the same host only)."""
    from_address: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    """A file holding the password (a mounted secret), instead of ``password``."""
    timeout: float = Field(default=10.0, gt=0, le=60)
    ca_file: Path | None = None
    """CA certificates (PEM) to verify the relay with, e.g. a private CA; unset: the
    system's."""

    @model_validator(mode="after")
    def _one_password(self) -> SmtpConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"smtp.password_file: cannot be read ({type(exc).__name__})"
                ) from None
        return None


class Mailer:
    """Sends plain-text messages through one SMTP relay."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._password = config.secret()

    def __repr__(self) -> str:
        return f"Mailer(host={self._config.host!r}, port={self._config.port})"

    async def send(self, to: str, subject: str, body: str) -> None:
        """Send one message, or raise :class:`MailError` (never naming the address)."""
        message = EmailMessage()
        message["From"] = self._config.from_address
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self._config.from_address.split("@", 1)[1])
        message.set_content(body)
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"The e-mail could not be sent ({type(exc).__name__})") from None

    def _send(self, message: EmailMessage) -> None:
        c = self._config
        context = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        smtp: smtplib.SMTP
        if c.security == "tls":
            smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout, context=context)
        else:
            smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
        with smtp:
            if c.security == "starttls":
                smtp.starttls(context=context)
            if c.username is not None and self._password is not None:
                smtp.login(c.username, self._password)
            smtp.send_message(message)
