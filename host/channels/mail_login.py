"""How the mail channel reaches a mailbox's servers, IMAP (``mail_imap``) and SMTP (``mail_smtp``) alike: the
password from the variable the mailbox names, read at each connection; TLS with verified certificates; a bound on
each step."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from host.errors import NclError
from host.settings import env_file
from host.store.mailboxes import Mailbox

TIMEOUT_S = 60.0  # a connect, login or command that takes longer has lost its server


def password(mailbox: Mailbox) -> str:
    """The mailbox's password, from the variable it names: the process environment, then ``.env``."""
    value = os.environ.get(mailbox.password_env)
    if value is None:
        path = env_file(os.environ, Path.cwd())
        if path.is_file():
            from dotenv import dotenv_values

            value = dotenv_values(path).get(mailbox.password_env)
    if not value:
        raise NclError(f"mailbox {mailbox.address}: {mailbox.password_env} is not set (environment or .env)")
    return value


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # certificates verified; SSL_CERT_FILE names another CA bundle
