"""Tools for trying the newsletter out locally: ``outbox``, a capture SMTP server writing a Maildir."""
