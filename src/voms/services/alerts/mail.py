"""Alert e-mail to operators over SMTP (the standard library's smtplib), VOMS_SMTP_*."""

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage

from voms.config import Settings


def recipients(settings: Settings, own: Sequence[str] | None) -> list[str]:
    """The provider's own operator addresses, else the installation's (VOMS_SMTP_TO)."""
    if own:
        return list(own)
    return [a.strip() for a in settings.smtp_to.split(",") if a.strip()]


def send(settings: Settings, to: Sequence[str], subject: str, body: str) -> None:
    """Send one message; raises when the server does not take it."""
    assert settings.smtp_host is not None
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message.set_content(body)
    timeout = settings.smtp_timeout_s
    client: smtplib.SMTP
    if settings.smtp_security == "tls":
        client = smtplib.SMTP_SSL(
            settings.smtp_host,
            settings.smtp_port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    with client:
        if settings.smtp_security == "starttls":
            client.starttls(context=ssl.create_default_context())
        if settings.smtp_username and settings.smtp_password is not None:
            client.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        client.send_message(message)
