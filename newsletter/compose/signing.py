"""Whether messages are signed, and with what, as the settings say.

Kept apart from :mod:`~newsletter.compose.dkim` so that deciding costs nothing: the
DKIM module (OpenSSL through ``cryptography``) is imported only when signing is on.
"""

from __future__ import annotations

from collections.abc import Callable

from newsletter.config import Settings
from newsletter.errors import ConfigError

__all__ = ["message_signer"]


def message_signer(settings: Settings) -> Callable[[bytes], bytes] | None:
    """The DKIM signing function the settings ask for, or None when DKIM is off.

    On when ``NEWSLETTER_DKIM_KEY_FILE`` is set; then ``[dkim] selector`` is required.
    A selector without a key file is an error too: a half-configured DKIM should not
    quietly send unsigned mail.
    """
    dkim = settings.dkim
    if settings.dkim_key_file is None:
        if dkim.selector:
            raise ConfigError("[dkim] selector is set but NEWSLETTER_DKIM_KEY_FILE is not: set it to the key's path")
        return None
    if not dkim.selector:
        raise ConfigError("NEWSLETTER_DKIM_KEY_FILE is set but [dkim] selector is not: add it to newsletter.toml")
    from newsletter.compose.dkim import load_signer  # cryptography: ~13 ms, only with DKIM on

    return load_signer(settings.dkim_key_file, selector=dkim.selector, domain=dkim.domain).sign
