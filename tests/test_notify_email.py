"""The email channel against a real SMTP server (aiosmtpd): plain, STARTTLS with trustme
certificates, implicit TLS, authentication and the failures around them."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.notify_fixtures import (
    PASSWORD,
    USER,
    Mailbox,
    SmtpServer,
    free_port,
    make_event,
    start_smtp,
    tls_files,
)
from watcher.clock import ManualClock
from watcher.config.channels import EmailChannelConfig
from watcher.notify.base import Failed, Retry, Sent
from watcher.notify.email import EmailChannel
from watcher.store.base import DeliveryKey


def channel(port: int, clock: ManualClock, **options: Any) -> EmailChannel:
    settings: dict[str, Any] = {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "sender": "Watcher <watcher@example.com>",
        "recipients": ["oncall@example.com", "lead@example.com"],
        "timeout": 10,
    }
    settings.update(options)
    return EmailChannel("mail", EmailChannelConfig.model_validate(settings), clock=clock)


def parsed(mailbox: Mailbox, index: int = 0) -> EmailMessage:
    content = mailbox.envelopes[index].original_content or b""
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_plain_smtp_sends_multipart_text_and_html(
    smtp: SmtpServer, clock: ManualClock
) -> None:
    """A plain SMTP server receives one message for the configured recipients, with a
    text and an HTML part and the event id in Message-ID and X-Watcher-Event-Id."""
    event = make_event()
    assert await channel(smtp.port, clock).send(event) == Sent()
    (envelope,) = smtp.mailbox.envelopes
    assert envelope.mail_from == "watcher@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "lead@example.com"]
    message = parsed(smtp.mailbox)
    assert message["Subject"] == "[prod] nightly-etl FAILED"
    assert message["Message-ID"] == f"<{event.id}@example.com>"
    assert message["X-Watcher-Event-Id"] == event.id
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Task ingest failed: boom" in text.get_content()
    assert "<h2>nightly-etl FAILED</h2>" in html.get_content()


async def test_one_address_replaces_the_recipients(smtp: SmtpServer, clock: ManualClock) -> None:
    """A per-address delivery (from a job's email_notifications) goes to that address only."""
    address = DeliveryKey("mail", "owner@example.com")
    await channel(smtp.port, clock).target(address).send(make_event())
    assert smtp.mailbox.envelopes[0].rcpt_tos == ["owner@example.com"]
    assert parsed(smtp.mailbox)["To"] == "owner@example.com"


def login_channel(port: int, clock: ManualClock, bundle: Path, password: str) -> EmailChannel:
    """A STARTTLS channel trusting the CA `bundle` that logs in as USER with `password`."""
    return channel(
        port, clock, security="starttls", ca_bundle=bundle, username=USER, password=password
    )


async def test_starttls_with_auth(tmp_path: Path, clock: ManualClock) -> None:
    """Against a server that requires STARTTLS and AUTH, with a trustme certificate
    trusted through ca_bundle, the message is sent inside TLS after logging in."""
    context, bundle = tls_files(tmp_path)
    server = await start_smtp(tls=context, require_starttls=True, auth=True)
    try:
        mail = login_channel(server.port, clock, bundle, PASSWORD)
        assert await mail.send(make_event()) == Sent()
    finally:
        await server.stop()
    assert len(server.mailbox.envelopes) == 1
    assert server.mailbox.tls_sessions == 1


async def test_wrong_password_is_permanent_and_not_echoed(
    tmp_path: Path, clock: ManualClock
) -> None:
    """An authentication failure (SMTP 535) is permanent; the error does not contain the
    password."""
    context, bundle = tls_files(tmp_path)
    server = await start_smtp(tls=context, require_starttls=True, auth=True)
    try:
        mail = login_channel(server.port, clock, bundle, "fake-wrong-password")
        result = await mail.send(make_event())
    finally:
        await server.stop()
    assert isinstance(result, Failed)
    assert result.error.startswith("SMTP 535")
    assert "fake-wrong-password" not in result.error
    assert server.mailbox.envelopes == []


async def test_starttls_is_required_not_opportunistic(smtp: SmtpServer, clock: ManualClock) -> None:
    """A server that does not offer STARTTLS gets nothing in clear text: the attempt fails
    (to be retried) instead of falling back."""
    result = await channel(smtp.port, clock, security="starttls").send(make_event())
    assert isinstance(result, Retry)
    assert "STARTTLS" in result.error
    assert smtp.mailbox.envelopes == []


async def test_untrusted_certificate_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    """TLS is verified by default: a certificate from an unknown CA stops the send."""
    context, _ = tls_files(tmp_path)
    server = await start_smtp(tls=context)
    try:
        result = await channel(server.port, clock, security="starttls").send(make_event())
    finally:
        await server.stop()
    assert isinstance(result, Retry)
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert server.mailbox.envelopes == []


async def test_implicit_tls(tmp_path: Path, clock: ManualClock) -> None:
    """`security: tls` speaks TLS from the first byte (port 465 style)."""
    context, bundle = tls_files(tmp_path)
    server = await start_smtp(tls=context, implicit_tls=True)
    try:
        result = await channel(server.port, clock, security="tls", ca_bundle=bundle).send(
            make_event()
        )
    finally:
        await server.stop()
    assert result == Sent()
    assert len(server.mailbox.envelopes) == 1


async def test_server_down_is_a_transient_failure(clock: ManualClock) -> None:
    """Nothing listening is retried later, and the error names the server."""
    port = free_port()
    result = await channel(port, clock).send(make_event())
    assert isinstance(result, Retry)
    assert f"127.0.0.1:{port}" in result.error


def test_cleartext_password_is_rejected() -> None:
    """A password may not travel over an unencrypted connection."""
    with pytest.raises(ValueError, match="password"):
        EmailChannelConfig.model_validate(
            {
                "type": "email",
                "host": "smtp.invalid",
                "security": "none",
                "sender": "w@example.com",
                "password": "fake",
            }
        )
