"""A throwaway Dovecot IMAP server (Debian package ``dovecot-imapd``) for the IMAP tests.

``DovecotServer`` writes a config of its own into a fresh temporary directory and runs
``dovecot -F -c <that config>`` (the master in the foreground, our child): IMAP on 127.0.0.1
on a free port, TLS (a self-signed certificate from tests/harness/tlsfiles.py, CA = the
certificate itself) on ``port`` with ``security="tls"``, or plain IMAP (STARTTLS offered) with
``security="starttls"``/``"none"``. One user, :data:`USER` / :data:`PASSWORD` (a static passdb:
no system account), whose mail is the Maildir++ ``maildir`` in the temporary directory
(subfolders are ``.name``). ``stop()`` (or leaving the ``with`` block) ends the one master it
started, by its PID (the master ends its own children), and removes the directory. No system
service and nothing under /etc/dovecot or /run/dovecot is used or touched::

    with DovecotServer() as server:
        server.port, server.ca_file          # where to connect, what to trust
        server.append("INBOX", raw_bytes)    # a message into a folder, through IMAP
        server.folder_messages("processed")  # the raw messages a folder holds, read from disk
        server.kill_sessions()               # drop every open IMAP connection (the server stays up)

Dovecot refuses to give mail access to uid 0, so the mail belongs to ``nobody`` (the
temporary directory is handed to it); the master itself runs as whoever we are (root here).
``without_move=True`` leaves ``MOVE`` (RFC 6851) out of the capabilities it announces, for the
COPY + STORE \\Deleted + UID EXPUNGE path.

For pytest: ``pytest_plugins = ["tests.harness.dovecot"]`` brings the fixture ``dovecot``
(a server of its own for each test). If Dovecot isn't installed it fails, naming
``scripts/bootstrap.sh --dovecot`` (scripts/test.sh installs it: no silent skip).

PYTEST_DONT_REWRITE: a test module may import this file before naming it in pytest_plugins.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest
from imapclient import IMAPClient

from tests.harness.tlsfiles import make_certificate

INSTALL_HINT = "run scripts/bootstrap.sh --dovecot (Debian package dovecot-imapd; CI's scripts/test.sh does)"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "imap-secret"
MAIL_USER = "nobody"  # Dovecot won't give mail access to root
_START_TIMEOUT = 30.0  # seconds: start-up takes ~0.1 s; this only stops a hung one hanging CI
_STOP_TIMEOUT = 15.0
_PORT_ATTEMPTS = 5
#: Dovecot 2.3's own post-login capabilities but MOVE (``without_move``): what an older server offers
_CAPABILITIES_WITHOUT_MOVE = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS"
    " THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS"
    " LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH"
    " LIST-STATUS BINARY LITERAL+"
)

Security = Literal["tls", "starttls", "none"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DovecotServer:
    """One Dovecot master in its own temporary directory; a context manager.

    Attributes once started: ``port``, ``host`` (127.0.0.1), ``security``, ``ca_file`` (the
    certificate to trust; None when plain), ``maildir`` (the user's Maildir++ root), ``pid``
    (the master's), ``log_path``, ``startup_seconds``.
    """

    host = "127.0.0.1"

    def __init__(self, *, security: Security = "tls", without_move: bool = False,
                 base_dir: Path | str | None = None) -> None:
        if security not in ("tls", "starttls", "none"):
            raise ValueError(f"security must be tls, starttls or none, not {security!r}")
        self.security: Security = security
        self.without_move = without_move
        self.base_dir = base_dir
        self.port = 0
        self.dir: Path | None = None
        self.ca_file: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._mail_user = pwd.getpwnam(MAIL_USER)

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> DovecotServer:
        if self.dir is not None:
            raise RuntimeError("this DovecotServer was started already")
        if not os.access(DOVECOT, os.X_OK) or not Path("/usr/lib/dovecot/imap").exists():
            raise RuntimeError(f"Dovecot's IMAP server is missing: {INSTALL_HINT}")
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir=self.base_dir))
        try:
            # The login and auth processes run as Dovecot's own users and must reach the config
            # and the sockets: the directory is world-traversable (it holds nothing secret).
            self.dir.chmod(0o755)
            for name in ("run", "state", "home"):
                (self.dir / name).mkdir()
            self.maildir.mkdir()
            for path in (self.maildir, self.dir / "home"):
                os.chown(path, self._mail_user.pw_uid, self._mail_user.pw_gid)
            if self.security != "none":
                cert, key = make_certificate(self.dir)
                self.ca_file = cert
            for attempt in range(_PORT_ATTEMPTS):
                self.port = free_port()
                self._write_config()
                if self._launch():
                    break
                if attempt == _PORT_ATTEMPTS - 1 or "Address already in use" not in self.log_text():
                    raise RuntimeError(f"Dovecot did not start; its log ({self.log_path}):\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the master this object started (by its PID only) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # SIGTERM: the master stops its children (login, imap, auth, ...) and exits.
            for sig, timeout in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
                process.send_signal(sig)
                try:
                    process.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def maildir(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "Maildir"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "dovecot.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _write_config(self) -> None:
        assert self.dir is not None
        tls = self.security != "none"
        lines = [
            "# tests/harness/dovecot.py: a private server; nothing of /etc/dovecot is read",
            f"base_dir = {self.dir}/run",
            f"state_dir = {self.dir}/state",
            f"log_path = {self.log_path}",
            "protocols = imap",
            "listen = 127.0.0.1",
            "auth_mechanisms = plain login",
            # Dovecot counts 127.0.0.1 as secured anyway; plain IMAP is what security="none" tests
            "disable_plaintext_auth = no",
            f"first_valid_uid = {self._mail_user.pw_uid}",
            f"mail_location = maildir:{self.maildir}",
            "mail_fsync = never",  # a throwaway server: no fsync
            # no statistics: a login process otherwise waits 5 s for the stats service at shutdown
            "stats_writer_socket_path =",
            # a refused login answers at once (the next login from 127.0.0.1 still waits ~4 s: anvil's penalty)
            "auth_failure_delay = 0",
            f"ssl = {'yes' if tls else 'no'}",
        ]
        if tls:
            assert self.ca_file is not None
            lines += [f"ssl_cert = <{self.ca_file}", f"ssl_key = <{self.dir / 'key.pem'}"]
        if self.without_move:
            lines.append(f"imap_capability = {_CAPABILITIES_WITHOUT_MOVE}")
        imap_port, imaps_port = (0, self.port) if self.security == "tls" else (self.port, 0)
        lines += [
            "passdb {", "  driver = static", f"  args = password={PASSWORD}", "}",
            "userdb {", "  driver = static",
            f"  args = uid={self._mail_user.pw_uid} gid={self._mail_user.pw_gid} home={self.dir}/home", "}",
            "service imap-login {",
            "  chroot =",  # the temporary directory isn't a chroot Dovecot set up
            f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}",
            f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps_port}\n    ssl = yes\n  }}",
            "}",
            "service anvil {", "  chroot =", "}",
        ]
        (self.dir / "dovecot.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _launch(self) -> bool:
        """Start the master on self.port; True once it greets, False if it exited."""
        assert self.dir is not None
        # --pdeathsig TERM: if this Python process dies without stopping the server, the master
        # gets SIGTERM instead of running on orphaned (as tests/harness/pgserver.py does).
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "--", DOVECOT, "-F", "-c", str(self.dir / "dovecot.conf")],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest; stop() ends the server
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:  # wait until it greets (readiness, not a timing assertion)
            if self.process.poll() is not None:
                self.process = None
                return False
            try:
                if self._greets():
                    return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Dovecot did not answer within {_START_TIMEOUT:.0f} s; its log:\n{self.log_text()}")
            time.sleep(0.01)

    def _greets(self) -> bool:
        # Our master's listener, not some other server that took the port first: Dovecot's
        # log says the master started, and the listener's socket answers "* OK".
        if "starting up" not in self.log_text():
            return False
        with contextlib.ExitStack() as stack:
            conn = stack.enter_context(socket.create_connection((self.host, self.port), timeout=5))
            if self.security == "tls":
                assert self.ca_file is not None
                context = ssl.create_default_context(cafile=str(self.ca_file))
                conn = stack.enter_context(context.wrap_socket(conn, server_hostname="localhost"))
            # A whole exchange, greeting to LOGOUT: a connection dropped half-way keeps the login
            # process (and so the master's shutdown) waiting for seconds.
            if not conn.recv(200).startswith(b"* OK"):
                return False
            conn.sendall(b"a LOGOUT\r\n")
            reply = b""
            while b"a OK" not in reply:
                chunk = conn.recv(200)
                if not chunk:
                    return False
                reply += chunk
            return True

    # --- the mail ---------------------------------------------------------------------

    def client(self) -> IMAPClient:
        """A logged-in ``imapclient.IMAPClient`` to fill or inspect folders (the tests' own side)."""
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        client = IMAPClient(self.host, self.port, ssl=self.security == "tls", ssl_context=context, timeout=30)
        if self.security == "starttls":
            client.starttls(context)
        client.login(USER, PASSWORD)
        return client

    def append(self, folder: str, *messages: bytes) -> None:
        """Put messages into ``folder`` (created if missing) through IMAP APPEND."""
        client = self.client()
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw)
        finally:
            client.logout()

    def folder_path(self, folder: str) -> Path:
        """The Maildir of an IMAP folder (INBOX is the root, others ``.name``)."""
        return self.maildir if folder.upper() == "INBOX" else self.maildir / f".{folder}"

    def folder_messages(self, folder: str) -> list[bytes]:
        """The raw messages of a folder, read from disk (Dovecot's own files), sorted by content.

        Messages flagged \\Deleted but not expunged still count: the tests want to see them.
        """
        path = self.folder_path(folder)
        found = []
        for sub in ("new", "cur"):
            directory = path / sub
            if directory.is_dir():
                found += [entry.read_bytes() for entry in directory.iterdir()]
        return sorted(found)

    def folder_exists(self, folder: str) -> bool:
        return (self.folder_path(folder) / "cur").is_dir()

    def session_pids(self) -> list[int]:
        """The PIDs of the ``imap`` processes serving a logged-in connection (children of our master)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if name == "imap" and int(rest[1]) == self.pid:
                pids.append(int(entry.name))
        return pids

    def kill_sessions(self) -> int:
        """Kill every ``imap`` process of our master (its children only, by PID): open connections drop.

        The server stays up and takes new connections. Returns how many were killed.
        """
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        return len(pids)


# --- pytest fixture ----------------------------------------------------------------------


@pytest.fixture
def dovecot() -> Iterator[DovecotServer]:
    """A Dovecot server of its own for this test (TLS on 127.0.0.1)."""
    with DovecotServer() as server:
        yield server
