"""Email over SMTP (aiosmtplib): STARTTLS that is required rather than opportunistic, or
implicit TLS, optional auth, and a multipart text + HTML message from templates.

Headers are built with the `email` package's SMTP policy from single-line values, so a job
name containing CR/LF can never add a header or a recipient; the HTML part is autoescaped.
The `Message-ID` derives from the event id: a duplicate delivery is recognisable as one.

A digest is one message: the headline as its subject (`12 alerts in prod: 10 FAILED,
...`), the members one line each (up to 50, then `and N more`), and a
`Message-ID` derived from the digest id. Digests use the default templates only (the
configured ones are written for one event).
"""

from __future__ import annotations

import contextlib
import copy
import email.policy
import email.utils
import ssl
from email.message import EmailMessage

import aiosmtplib

from watcher.clock import Clock
from watcher.config.channels import EmailChannelConfig
from watcher.events import Event
from watcher.notify.base import (
    ChannelBase,
    Digest,
    Failed,
    Result,
    Retry,
    Sent,
    excerpt,
    redact,
)
from watcher.notify.templates import render_digest, summarize
from watcher.notify.text import one_line, truncate
from watcher.store.base import DeliveryKey

SUBJECT_LIMIT = 250
BODY_LIMIT = 100_000


def _smtp_result(code: int, message: str) -> Result:
    # SMTP says it itself: 4yz is transient, 5yz permanent.
    text = f"SMTP {code}: {excerpt(message)}"
    return Retry(text) if 400 <= code < 500 else Failed(text)


class EmailChannel(ChannelBase[EmailChannelConfig]):
    def __init__(self, name: str, config: EmailChannelConfig, *, clock: Clock) -> None:
        super().__init__(name, config)
        self._clock = clock
        self._recipients = list(config.recipients)
        self._subject = self.template("subject.txt.j2", flavour="text", field="subject_template")
        self._text = self.template("email.txt.j2", flavour="text", field="text_template")
        self._html = self.template("email.html.j2", flavour="html", field="html_template")
        self._secrets = [config.password.get_secret_value()] if config.password else []

    def target(self, key: DeliveryKey) -> EmailChannel:
        """Itself, or for a key with a recipient (an address from a job's own
        email_notifications) this channel sending to that address instead of the
        configured recipients."""
        if not key.recipient:
            return self
        addressed = copy.copy(self)
        addressed._recipients = [key.recipient]
        return addressed

    def _envelope(self, subject: str, msg_id: str, recipients: list[str]) -> EmailMessage:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["Subject"] = truncate(one_line(subject), SUBJECT_LIMIT)
        msg["From"] = self._config.sender
        msg["To"] = ", ".join(recipients)
        msg["Date"] = email.utils.formatdate(self._clock.time(), usegmt=True)
        domain = email.utils.parseaddr(self._config.sender)[1].rpartition("@")[2] or "watcher"
        msg["Message-ID"] = f"<{msg_id}@{domain}>"
        msg["Auto-Submitted"] = "auto-generated"
        return msg

    def message(self, event: Event, recipients: list[str]) -> EmailMessage:
        msg = self._envelope(self._subject.render(event), event.id, recipients)
        msg["X-Watcher-Event-Id"] = event.id
        msg["X-Watcher-Event-Type"] = str(event.type)
        msg.set_content(truncate(self._text.render(event), BODY_LIMIT))
        msg.add_alternative(truncate(self._html.render(event), BODY_LIMIT), subtype="html")
        return msg

    def digest_message(self, digest: Digest, recipients: list[str]) -> EmailMessage:
        summary = summarize(digest.events, digest.group)
        msg = self._envelope(summary.headline, digest.id, recipients)
        msg["X-Watcher-Digest-Id"] = digest.id
        msg["X-Watcher-Digest-Count"] = str(summary.total)
        text = render_digest("digest_email.txt.j2", "text", summary, digest.id)
        html = render_digest("digest_email.html.j2", "html", summary, digest.id)
        msg.set_content(truncate(text, BODY_LIMIT))
        msg.add_alternative(truncate(html, BODY_LIMIT), subtype="html")
        return msg

    def _client(self) -> aiosmtplib.SMTP:
        config = self._config
        context = ssl.create_default_context(
            cafile=str(config.ca_bundle) if config.ca_bundle else None
        )
        return aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.security == "tls",
            # True, not None: without STARTTLS the send fails instead of going out in clear.
            start_tls=config.security == "starttls",
            tls_context=context,
            timeout=config.timeout,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
        )

    async def send(self, event: Event) -> Result:
        recipients = list(self._recipients)
        if not recipients:
            return Failed("no recipients configured")
        return await self._deliver(self.message(event, recipients))

    async def send_digest(self, digest: Digest) -> Result:
        """One message for the whole digest (see the module docstring)."""
        recipients = list(self._recipients)
        if not recipients:
            return Failed("no recipients configured")
        return await self._deliver(self.digest_message(digest, recipients))

    async def _deliver(self, msg: EmailMessage) -> Result:
        result = await self._send(msg)
        if isinstance(result, Sent):
            return result
        error = redact(result.error, self._secrets)
        return Retry(error, result.after) if isinstance(result, Retry) else Failed(error)

    async def _send(self, msg: EmailMessage) -> Result:
        where = f"{self._config.host}:{self._config.port}"
        smtp = self._client()
        try:
            await smtp.connect()
            refused, _ = await smtp.send_message(msg)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return _smtp_result(first.code, f"{first.recipient}: {first.message}")
        except aiosmtplib.SMTPResponseException as exc:
            return _smtp_result(exc.code, exc.message)
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            return Retry(f"{where}: timed out")
        except ssl.SSLError as exc:
            return Retry(f"{where}: TLS failed: {exc.reason or type(exc).__name__}")
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            return Retry(f"cannot connect to {where}: {type(exc).__name__}")
        except aiosmtplib.SMTPException as exc:
            # e.g. the server does not offer STARTTLS: never fall back to clear text.
            return Retry(f"{where}: {excerpt(exc.message)}")
        finally:
            with contextlib.suppress(Exception):
                # The message is accepted before QUIT; a failing QUIT must not resend it.
                if smtp.is_connected:
                    await smtp.quit()
            smtp.close()
        if refused:
            # Accepted for the other recipients: a retry would mail them all again, for an
            # address that is wrong (5xx) or full (4xx) for hours. Documented in alerts.md.
            named = (f"{a} ({r.code} {excerpt(r.message)})" for a, r in sorted(refused.items()))
            return Sent("refused by the server: " + ", ".join(named))
        return Sent()
