"""Postfix's ``smtp-sink`` (Debian package ``postfix``): a fast C SMTP server that dumps each message to a file.

Used where volume matters. Each dump file is the message as received, after a few
``X-…-Args`` lines that give the envelope; line ends are LF.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from tests.harness.smtpserver import free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@dataclass(frozen=True)
class Dump:
    mail_from: str
    rcpts: tuple[str, ...]
    message: EmailMessage


class SmtpSink:
    """``smtp-sink`` on 127.0.0.1, dumping into ``folder``; :meth:`stop` ends only the process it started."""

    def __init__(self, folder: Path) -> None:
        if not os.access(SMTP_SINK, os.X_OK):
            raise RuntimeError(f"{SMTP_SINK} is missing: run scripts/bootstrap.sh --smtp-sink (Debian package postfix)")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        user = ["-u", "root"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [SMTP_SINK, *user, "-d", f"{folder}/dump.", "-c", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:  # wait until it listens (readiness, not a timing assertion)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"smtp-sink did not start on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def dumps(self) -> list[Dump]:
        found: list[Dump] = []
        for path in sorted(self.folder.glob("dump.*")):
            data = path.read_bytes()
            envelope, _, rest = data.partition(b"\nReceived: ")
            mail_from = ""
            rcpts: list[str] = []
            for line in envelope.decode("ascii").splitlines():
                if line.startswith("X-Mail-Args: <"):
                    mail_from = line.split("<", 1)[1].split(">", 1)[0]
                elif line.startswith("X-Rcpt-Args: <"):
                    rcpts.append(line.split("<", 1)[1].split(">", 1)[0])
            # Drop the Received header smtp-sink adds (it continues on tab-indented lines).
            body = rest.split(b"\n", 1)[1]
            while body.startswith(b"\t"):
                body = body.split(b"\n", 1)[1]
            message = BytesParser(policy=policy.default).parsebytes(body)
            assert isinstance(message, EmailMessage)
            found.append(Dump(mail_from, tuple(rcpts), message))
        return found

    def by_recipient(self) -> Counter[str]:
        return Counter(rcpt for dump in self.dumps() for rcpt in dump.rcpts)
