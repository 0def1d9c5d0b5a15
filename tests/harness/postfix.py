"""A throwaway Postfix instance (Debian package ``postfix``) that relays mail and makes real DSNs.

``PostfixServer(relay_port)`` writes a ``main.cf`` and a ``master.cf`` of its own into a fresh
temporary directory, with the queue, data and mail directories beside them, and runs Postfix's
``master`` daemon on them in the foreground, as our child: one ``smtpd`` on 127.0.0.1 on a
free port (``port``), taking mail from 127.0.0.0/8 only, and

- relaying every other domain to ``[127.0.0.1]:relay_port`` (a test SMTP server, e.g.
  tests/harness/smtpserver.py, whose refusals Postfix turns into bounces);
- delivering mail for the bounce domain (:data:`BOUNCE_DOMAIN`) into the Maildir
  ``maildir`` (``<mail>/bounces/``): ``bounces@bounces.test`` and, with
  ``recipient_delimiter = +``, every VERP address ``bounces+<anything>@bounces.test``; the
  ``virtual`` agent adds ``X-Original-To`` and ``Delivered-To`` naming the full VERP address.

A 5xx refusal makes Postfix bounce at once. A 4xx one would be retried for days; with
``maximal_queue_lifetime = 0`` (Postfix: "Specify 0 when mail delivery should be tried only
once") it bounces after the first try too, with the 4.x.x status and ``Action: failed``, so
a test sees both kinds of DSN within a second. Pass ``settings={"maximal_queue_lifetime": "1d"}``
to keep deferred mail queued instead (then :meth:`flush` is ``postqueue -f``).

``stop()`` (or leaving the ``with`` block) ends the one master it started, by its PID (SIGTERM:
the master stops its own children), and removes the directory. Nothing of the system's
``/etc/postfix``, ``/var/spool/postfix`` or a running system Postfix is read, written or
signalled: every command is given ``-c <our config directory>``, whose main.cf names our own
queue and data directories. Root is needed (Postfix's daemons switch to the ``postfix`` user);
delivered mail belongs to ``nobody``.

For pytest: ``pytest_plugins = ["tests.harness.postfix"]`` brings the fixtures ``relay`` (a
recording SMTP server on 127.0.0.1, tests/harness/smtpserver.py) and ``postfix`` (an
instance of its own for each test, relaying to ``relay``).

PYTEST_DONT_REWRITE: a test module may import this file before naming it in pytest_plugins.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType

import pytest

from tests.harness.smtpserver import SmtpServer

INSTALL_HINT = "run scripts/bootstrap.sh --smtp-sink (Debian package postfix; CI's scripts/test.sh does)"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
HOSTNAME = "mta.test"  # Reporting-MTA and the DSNs' From: MAILER-DAEMON@mta.test
BOUNCE_DOMAIN = "bounces.test"
BOUNCE_LOCAL = "bounces"
BOUNCE_ADDRESS = f"{BOUNCE_LOCAL}@{BOUNCE_DOMAIN}"
MAIL_USER = "nobody"  # the virtual agent won't deliver as root
_START_TIMEOUT = 30.0  # seconds: start-up takes ~0.3 s; this only stops a hung one hanging CI
_STOP_TIMEOUT = 15.0
_PORT_ATTEMPTS = 5

#: the daemons a relay that bounces needs, none chrooted (our queue isn't a prepared chroot)
_SERVICES = """\
pickup     unix  n  -  n  60     1  pickup
cleanup    unix  n  -  n  -      0  cleanup
qmgr       unix  n  -  n  300    1  qmgr
rewrite    unix  -  -  n  -      -  trivial-rewrite
bounce     unix  -  -  n  -      0  bounce
defer      unix  -  -  n  -      0  bounce
trace      unix  -  -  n  -      0  bounce
verify     unix  -  -  n  -      1  verify
flush      unix  n  -  n  1000?  0  flush
proxymap   unix  -  -  n  -      -  proxymap
proxywrite unix  -  -  n  -      1  proxymap
smtp       unix  -  -  n  -      -  smtp
relay      unix  -  -  n  -      -  smtp
showq      unix  n  -  n  -      -  showq
error      unix  -  -  n  -      -  error
retry      unix  -  -  n  -      -  error
discard    unix  -  -  n  -      -  discard
local      unix  -  n  n  -      -  local
virtual    unix  -  n  n  -      -  virtual
anvil      unix  -  -  n  -      1  anvil
scache     unix  -  -  n  -      1  scache
postlog    unix-dgram n  -  n  -  1  postlogd
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postconf(name: str) -> str:
    """One of Postfix's compiled-in defaults (``postconf -d``), e.g. where its daemons are."""
    done = subprocess.run([POSTCONF, "-dh", name], capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


class PostfixServer:
    """One Postfix master in its own temporary directory; a context manager.

    Attributes once started: ``port`` (its smtpd on ``host`` 127.0.0.1), ``relay_port``,
    ``maildir`` (where mail for the bounce domain lands), ``pid`` (the master's),
    ``config_dir``, ``queue_dir``, ``log_path``, ``startup_seconds``.
    """

    host = "127.0.0.1"

    def __init__(self, relay_port: int, *, settings: Mapping[str, str] | None = None,
                 base_dir: Path | str | None = None) -> None:
        """``relay_port``: where everything not for the bounce domain goes (127.0.0.1);
        ``settings``: more main.cf parameters, or other values for ours.
        """
        if os.geteuid() != 0:
            raise RuntimeError("tests/harness/postfix.py needs root: Postfix's master starts its daemons as root")
        if not os.access(POSTFIX, os.X_OK):
            raise RuntimeError(f"Postfix is missing: {INSTALL_HINT}")
        self.relay_port = relay_port
        self.extra_settings = dict(settings or {})
        self.base_dir = base_dir
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._mail_user = pwd.getpwnam(MAIL_USER)
        self._owner = pwd.getpwnam(_postconf("mail_owner"))

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> PostfixServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PostfixServer:
        if self.dir is not None:
            raise RuntimeError("this PostfixServer was started already")
        began = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="postfix-", dir=self.base_dir))
        try:
            self.dir.chmod(0o755)  # the daemons run as the postfix user and must reach their directories
            for path in (self.config_dir, self.queue_dir, self.data_dir, self.mail_base):
                path.mkdir()
            os.chown(self.data_dir, self._owner.pw_uid, self._owner.pw_gid)
            os.chown(self.mail_base, self._mail_user.pw_uid, self._mail_user.pw_gid)
            self.log_path.touch()
            for attempt in range(_PORT_ATTEMPTS):
                self.port = free_port()
                self._write_config()
                if attempt == 0:
                    # Checks the configuration and creates the queue's subdirectories with their
                    # owners and modes (post-install create-missing), all under our own directories.
                    self._run(POSTFIX, "-c", str(self.config_dir), "check")
                if self._launch():
                    break
                if attempt == _PORT_ATTEMPTS - 1 or "Address already in use" not in self.log_text():
                    raise RuntimeError(f"Postfix did not start; its log ({self.log_path}):\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the master this object started (by its PID only) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # SIGTERM is what `postfix stop` sends the master: it stops its children and exits.
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

    # --- where things are -------------------------------------------------------------

    def _path(self, name: str) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / name

    @property
    def config_dir(self) -> Path:
        return self._path("config")

    @property
    def queue_dir(self) -> Path:
        return self._path("queue")

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def mail_base(self) -> Path:
        return self._path("mail")

    @property
    def maildir(self) -> Path:
        """The Maildir that mail for ``bounces(+…)@bounces.test`` is delivered to (new/ cur/ tmp/)."""
        return self.mail_base / BOUNCE_LOCAL

    @property
    def log_path(self) -> Path:
        return self._path("maillog")

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- configuration and start ------------------------------------------------------

    def _write_config(self) -> None:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            # the package's programs and its postfix-files list (read only)
            "daemon_directory": _postconf("daemon_directory"),
            "command_directory": _postconf("command_directory"),
            "shlib_directory": _postconf("shlib_directory"),
            "meta_directory": _postconf("meta_directory"),
            "maillog_file": str(self.log_path),  # no syslog here: postlogd writes our own log
            "maillog_file_prefixes": str(self.dir),
            "myhostname": HOSTNAME,
            "mydomain": HOSTNAME,
            "myorigin": HOSTNAME,
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[127.0.0.1]:{self.relay_port}",
            "smtp_host_lookup": "native",  # no DNS: the relay is a literal address
            "disable_dns_lookups": "yes",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "recipient_delimiter": "+",
            "virtual_mailbox_domains": BOUNCE_DOMAIN,
            "virtual_mailbox_base": str(self.mail_base),
            # "bounces/": a Maildir (the trailing slash); bounces+tag@ is looked up as bounces@
            "virtual_mailbox_maps": f"inline:{{ {BOUNCE_ADDRESS}={BOUNCE_LOCAL}/ }}",
            "virtual_uid_maps": f"static:{self._mail_user.pw_uid}",
            "virtual_gid_maps": f"static:{self._mail_user.pw_gid}",
            "virtual_minimum_uid": "1",
            "maximal_queue_lifetime": "0",  # a 4xx refusal bounces after the first try
            "bounce_queue_lifetime": "0",
            "message_size_limit": str(50 * 1024 * 1024),  # room for a 10 MB attachment, base64 and returned
            "virtual_mailbox_limit": "0",  # no limit (it may not be below message_size_limit)
            "smtputf8_enable": "no",
            "biff": "no",
        }
        settings.update(self.extra_settings)
        main = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.config_dir / "main.cf").write_text("# tests/harness/postfix.py: a private instance\n" + main)
        master = f"127.0.0.1:{self.port} inet  n  -  n  -  -  smtpd\n" + _SERVICES
        (self.config_dir / "master.cf").write_text("# tests/harness/postfix.py\n" + master)

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C", "TZ": "UTC",
                "MAIL_CONFIG": str(self.config_dir)}

    def _run(self, *command: str) -> str:
        done = subprocess.run(command, env=self._env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stdout}{done.stderr}\n"
                               f"log:\n{self.log_text()}")
        return done.stdout

    def _launch(self) -> bool:
        """Start the master on self.port; True once its smtpd greets, False if it exited."""
        # The master binary itself, in the foreground (no -w: it doesn't fork), so that its PID is
        # our child's; `postfix start` would daemonise it. --pdeathsig TERM: if this Python process
        # dies without stopping it, the master gets what `postfix stop` sends.
        master = Path(_postconf("daemon_directory")) / "master"
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", "--", str(master), "-c", str(self.config_dir)],
            env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest; stop() ends the server
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:  # wait until its smtpd greets (readiness, not a timing assertion)
            if self.process.poll() is not None:
                self.process = None
                return False
            if "daemon started" in self.log_text():  # ours, not some other server on the port
                try:
                    with socket.create_connection((self.host, self.port), timeout=5) as conn:
                        if conn.recv(200).startswith(b"220"):
                            return True
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix did not answer within {_START_TIMEOUT:.0f} s; its log:\n{self.log_text()}")
            time.sleep(0.02)

    # --- the queue and the mail -------------------------------------------------------

    def flush(self) -> None:
        """``postqueue -f``: try every deferred message again now."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def queue_ids(self) -> list[str]:
        """The IDs of the messages in the queue (``postqueue -j``)."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-j")
        return [json.loads(line)["queue_id"] for line in out.splitlines() if line.strip()]

    def maildir_files(self) -> list[Path]:
        """The files of the bounce Maildir (new/ and cur/), oldest first."""
        files = [entry for sub in ("new", "cur") if (self.maildir / sub).is_dir()
                 for entry in (self.maildir / sub).iterdir()]
        return sorted(files, key=lambda path: (path.stat().st_mtime, path.name))

    def messages(self) -> list[EmailMessage]:
        """The messages delivered to the bounce Maildir, parsed, oldest first."""
        parsed = []
        for path in self.maildir_files():
            message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    def wait_for_mail(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Block until the bounce Maildir holds at least ``count`` messages; its files, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            files = self.maildir_files()
            if len(files) >= count:
                return files
            if time.monotonic() > deadline:
                raise AssertionError(f"the bounce Maildir holds {len(files)} message(s) after {timeout:.0f} s, not"
                                     f" {count}; Postfix's log:\n{self.log_text()}")
            time.sleep(0.02)

    def wait_until_idle(self, timeout: float = 30.0) -> None:
        """Block until the queue is empty (everything delivered or bounced, the DSNs delivered too)."""
        deadline = time.monotonic() + timeout
        while self.queue_ids():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix's queue is not empty after {timeout:.0f} s; its log:\n{self.log_text()}")
            time.sleep(0.05)


# --- pytest fixtures ---------------------------------------------------------------------


@pytest.fixture
def relay() -> Iterator[SmtpServer]:
    """A recording SMTP server on 127.0.0.1 for Postfix to relay to (its Recorder refuses on request)."""
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postfix(relay: SmtpServer) -> Iterator[PostfixServer]:
    """A Postfix instance of its own for this test, relaying to ``relay``, bounces into ``postfix.maildir``."""
    with PostfixServer(relay.port) as server:
        yield server
