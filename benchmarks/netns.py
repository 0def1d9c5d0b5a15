"""Latency (B2): dispatch to a relay 30 ms away, at 8, 32 and 128 connections.

Two network namespaces made for the run, joined by a veth pair with private addresses
(near ``10.211.0.1/30``, far ``10.211.0.2/30``), each side delaying what it sends by
``--delay-ms`` (15 ms: 30 ms round trip). ``smtp-sink`` runs in the far namespace,
``newsletter dispatch`` in the near one (``ip netns exec``), so every packet crosses the
delayed veth and nothing leaves the two namespaces. (The project's rule is that
benchmark traffic goes only to 127.0.0.1; these two addresses on our own veth, inside
namespaces this benchmark creates and deletes, are the deliberate exception issue 4 asks
for.)

The delay is ``tc qdisc add dev … root netem delay 15ms`` where the kernel has netem.
Where it doesn't (``Error: Specified qdisc kind is unknown``: some VM kernels are built
without ``sch_netem``, and without ``fq``/``etf`` too), each namespace gets
``iptables -t mangle -A PREROUTING -i <veth> -j NFQUEUE`` and :mod:`benchmarks.delayer`,
which holds each packet in the kernel's queue and accepts it 15 ms later: the same delay
on the same real TCP segments, at the cost of a little CPU (reported). It delays what a
side *receives*, not what it sends: a packet held on the sender's OUTPUT is still charged
to its socket, and TCP small queues then cap each connection at about one initial window
(~14 KB) per round trip (a 27 KB message took 4 round trips instead of 2). netem orphans
the packets it holds, so it doesn't have that problem on the sending side.

The round trip is measured with ``ping -U`` (user-to-user: without ``-U`` ping takes the
kernel's receive timestamp, taken before a delay on the receiving side) and with TCP
connects from the near namespace.
For each connection count the dispatch sends enough messages for about
``--latency-seconds`` at the ideal rate ``connections / (2 × RTT)``: two round trips per
message (the envelope and the message pipelined, then the final reply). The ratio to
that ideal is the figure (target ≥ 0.9); the 4- and 5-round-trip ideals of lock-step
SMTP (MAIL, RCPT, DATA, message, and RSET or a reconnect) are shown for reference, and
so is Postfix's smtp-source, a lock-step C client, over the same path.

Namespaces, the veth pair, the delayers and smtp-sink are removed whatever happens
(``finally``, with SIGINT, SIGTERM and SIGHUP turned into exceptions); namespaces that
an earlier run of this benchmark left behind (its PID gone) are removed at the start.
Needs root (CAP_NET_ADMIN) and iproute2; missing iproute2, iputils-ping or iptables
(NFQUEUE fallback) are installed with apt-get when running as root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import report
from benchmarks.delivery import (
    BOUNCE_ADDRESS,
    DispatchRun,
    auto_timeout,
    build_database,
    dispatch_once,
    make_workspace,
    message_size,
    rate_text,
    scratch,
    warn,
)
from benchmarks.servers import (
    Finished,
    SmtpSink,
    signals_deferred,
    signals_interrupt,
    smtp_source,
    venv_python,
    which,
)

__all__ = ["Wire", "add_arguments", "run"]

NEAR_ADDRESS = "10.211.0.1"
FAR_ADDRESS = "10.211.0.2"
PREFIX = 30
SINK_PORT = 2525
RATIO_TARGET = 0.9
NAME_PATTERN = re.compile(r"^nlb(\d+)[nf]0?\b")

_PROBE = """
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection((host, port), timeout=2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
for _ in range(count):
    start = time.perf_counter()
    socket.create_connection((host, port), timeout=5).close()
    print((time.perf_counter() - start) * 1000)
"""


# The least a message can take on this path: one connection, raw socket, pipelined like the
# dispatch (MAIL, RCPT and DATA in one write, then the message), no ledger, no Python SMTP library.
_FLOOR_CLIENT = """
import socket, statistics, sys, time
host, port, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
connection = socket.create_connection((host, port))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
replies = connection.makefile("rb")
def reply():
    while True:
        line = replies.readline()
        if line[3:4] != b"-":
            return line
reply()
connection.sendall(b"EHLO floor.example\\r\\n")
reply()
message = (b"X" * 78 + b"\\r\\n") * max(1, size // 80) + b".\\r\\n"
times = []
for _ in range(count):
    start = time.perf_counter()
    connection.sendall(b"MAIL FROM:<a@example.com>\\r\\nRCPT TO:<b@example.com>\\r\\nDATA\\r\\n")
    reply(); reply(); reply()
    connection.sendall(message)
    reply()
    times.append((time.perf_counter() - start) * 1000)
connection.sendall(b"QUIT\\r\\n")
print(statistics.median(times[3:]))
"""


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True)


def _must(*command: str) -> None:
    done = _run(*command)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")


def apt_install(packages: list[str]) -> bool:
    """``apt-get install`` as bootstrap does (root only); False when that isn't possible here."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print(f"installing {' '.join(packages)} (apt)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                          env=env, stdout=subprocess.DEVNULL, check=False)
    return done.returncode == 0


def ensure_tool(command: str, package: str) -> str | None:
    """The path of ``command``, installing Debian's ``package`` when it is missing and we can."""
    found = which(command)
    if found is None and apt_install([package]):
        found = which(command)
    if found is None:
        print(f"{command} is missing: install it with `apt-get install {package}`", file=sys.stderr)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete namespaces and veths that an earlier run of this benchmark left behind (its PID is gone)."""
    for line in _run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = NAME_PATTERN.match(name)
        if match and not _alive(int(match.group(1))):
            print(f"removing namespace {name} left by an earlier run", file=sys.stderr)
            _run("ip", "netns", "del", name)
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            match = NAME_PATTERN.match(name)
            if match and not _alive(int(match.group(1))):
                _run("ip", "link", "del", name)


@dataclass
class Delayer:
    """One :mod:`benchmarks.delayer` process in a namespace, and its figures once stopped."""

    process: subprocess.Popen[str]
    cpu: float = 0.0
    summary: str = ""


@dataclass
class Wire:
    """The two namespaces and the delayed veth between them."""

    delay_ms: float
    #: sysctls set in both namespaces ("net.ipv4.tcp_slow_start_after_idle=0"), for experiments
    sysctls: tuple[str, ...] = ()
    tag: str = field(default_factory=lambda: f"nlb{os.getpid()}")
    method: str = ""
    delayers: list[Delayer] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    started: float = 0.0
    lifetime: float = 0.0  # seconds from setup to teardown

    @property
    def near(self) -> str:
        return f"{self.tag}n"

    @property
    def far(self) -> str:
        return f"{self.tag}f"

    def _veth(self, namespace: str) -> str:
        return f"{namespace}0"

    def setup(self) -> None:
        self.started = time.monotonic()
        remove_stale()
        for namespace in (self.near, self.far):
            _must("ip", "netns", "add", namespace)
            self.created.append(namespace)
        near_if, far_if = self._veth(self.near), self._veth(self.far)
        _must("ip", "link", "add", near_if, "type", "veth", "peer", "name", far_if)
        self.created.append(near_if)  # in the root namespace until moved
        _must("ip", "link", "set", near_if, "netns", self.near)
        self.created.remove(near_if)
        _must("ip", "link", "set", far_if, "netns", self.far)
        for namespace, interface, address in ((self.near, near_if, NEAR_ADDRESS), (self.far, far_if, FAR_ADDRESS)):
            _must("ip", "-n", namespace, "addr", "add", f"{address}/{PREFIX}", "dev", interface)
            _must("ip", "-n", namespace, "link", "set", "lo", "up")
            _must("ip", "-n", namespace, "link", "set", interface, "up")
            for setting in self.sysctls:
                _must("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", setting)
        self._delay(near_if, far_if)

    def _delay(self, near_if: str, far_if: str) -> None:
        tc = ensure_tool("tc", "iproute2")
        if tc is not None:
            delay = f"{self.delay_ms:g}ms"
            # limit: netem's default queue of 1000 packets would drop at 128 connections.
            attempt = _run(tc, "-n", self.near, "qdisc", "add", "dev", near_if, "root", "netem", "delay", delay,
                           "limit", "100000")
            if attempt.returncode == 0:
                _must(tc, "-n", self.far, "qdisc", "add", "dev", far_if, "root", "netem", "delay", delay,
                      "limit", "100000")
                self.method = f"tc netem delay {delay} on each side"
                return
            print(f"tc netem: {attempt.stderr.strip()} (no sch_netem in this kernel): using NFQUEUE and "
                  "benchmarks/delayer.py instead", file=sys.stderr)
        iptables = ensure_tool("iptables", "iptables")
        if iptables is None:
            raise RuntimeError("no way to delay packets: neither netem nor iptables (apt-get install iptables)")
        for namespace, interface in ((self.near, near_if), (self.far, far_if)):
            # On the way in: held on the way out, packets would still count against the sender's socket.
            _must("ip", "netns", "exec", namespace, iptables, "-t", "mangle", "-A", "PREROUTING", "-i", interface,
                  "-j", "NFQUEUE", "--queue-num", "0")
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, str(venv_python()), "-m", "benchmarks.delayer",
                 "--delay-ms", f"{self.delay_ms:g}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                cwd=report.ROOT,
            )
            self.delayers.append(Delayer(process))
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"the delayer in {namespace} did not start: {line} {process.stdout.read()}")
        self.method = (f"NFQUEUE + benchmarks/delayer.py holding each incoming packet {self.delay_ms:g} ms on "
                       "each side (no netem in this kernel)")

    def teardown(self) -> None:
        """Stop the delayers (by PID) and delete the namespaces with their veth; SIGINT can't cut it short."""
        with signals_deferred():
            self.lifetime = time.monotonic() - self.started
            for delayer in self.delayers:
                process = delayer.process
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
                    try:
                        _, status, usage = _wait4(process.pid, 10)
                        process.returncode = os.waitstatus_to_exitcode(status)
                        delayer.cpu = usage.ru_utime + usage.ru_stime
                    except TimeoutError:
                        process.kill()
                        process.wait()
                    if process.stdout is not None:
                        delayer.summary = process.stdout.read().strip()
                        process.stdout.close()
            for name in reversed(self.created):
                if name.endswith("0"):
                    _run("ip", "link", "del", name)
                else:
                    _run("ip", "netns", "del", name)
            self.created.clear()

    def ping(self, count: int = 10) -> float | None:
        """Average RTT in ms from ``ping -U`` (user to user) in the near namespace (None without ping)."""
        ping = ensure_tool("ping", "iputils-ping")
        if ping is None:
            return None
        done = _run("ip", "netns", "exec", self.near, ping, "-U", "-c", str(count), "-i", "0.2", "-q", FAR_ADDRESS)
        match = re.search(r"= [\d.]+/([\d.]+)/", done.stdout)
        return float(match.group(1)) if match else None

    def tcp_rtts(self, port: int, count: int = 10) -> list[float]:
        """Milliseconds of ``count`` TCP connects (SYN to SYN-ACK) from the near namespace; [] when it can't."""
        done = _run("ip", "netns", "exec", self.near, str(venv_python()), "-c", _PROBE, FAR_ADDRESS, str(port),
                    str(count))
        if done.returncode != 0:
            return []
        return [float(value) for value in done.stdout.split()]

    def floor_ms(self, port: int, size: int, count: int = 30) -> float | None:
        """Median ms per message of the minimal pipelined client (:data:`_FLOOR_CLIENT`), None if it failed."""
        done = _run("ip", "netns", "exec", self.near, str(venv_python()), "-c", _FLOOR_CLIENT, FAR_ADDRESS,
                    str(port), str(size), str(count))
        try:
            return float(done.stdout.strip())
        except ValueError:
            print(f"warning: the floor probe failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
            return None

    def sink_ready(self, port: int) -> bool:
        """Whether smtp-sink in the far namespace accepts connections from the near one (waits up to 10 s)."""
        return bool(self.tcp_rtts(port, 1))


def _wait4(pid: int, timeout: float) -> tuple[int, int, resource.struct_rusage]:
    deadline = time.monotonic() + timeout
    while True:
        found, status, usage = os.wait4(pid, os.WNOHANG)
        if found:
            return found, status, usage
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


@contextlib.contextmanager
def wire(delay_ms: float, sysctls: Sequence[str] = ()) -> Iterator[Wire]:
    """The namespaces and the delayed veth for the time of a ``with`` block."""
    made = Wire(delay_ms, tuple(sysctls))
    try:
        made.setup()
        yield made
    finally:
        made.teardown()


@dataclass(frozen=True)
class LatencyResult:
    connections: int
    run: DispatchRun
    source: Finished | None
    source_messages: int


def _ideal(connections: int, rtt_ms: float, trips: int) -> float:
    return connections / (trips * rtt_ms / 1000)


def run(args: argparse.Namespace, command: str) -> int:
    """B2: msg/s at each connection count over the delayed veth, against the ideal."""
    if os.geteuid() != 0:
        print("latency benchmark skipped: it needs root (network namespaces)", file=sys.stderr)
        return 1
    if ensure_tool("ip", "iproute2") is None:
        return 1
    counts: list[int] = args.latency_connections
    seconds: float = args.latency_seconds if args.latency_seconds is not None else (1.5 if args.quick else 10.0)
    delay_ms: float = args.delay_ms
    issue = Path(args.issue)
    print(f"latency benchmark: {delay_ms:g} ms each way, connections {', '.join(map(str, counts))}",
          file=sys.stderr, flush=True)
    results: list[LatencyResult] = []
    with signals_interrupt(), scratch(args.workdir, "nl-latency-", args.keep) as folder, \
            wire(delay_ms, args.netns_sysctl) as made:
        probe = make_workspace(folder / "probe", issue=issue, host=FAR_ADDRESS, port=SINK_PORT, connections=1)
        message_bytes = message_size(probe)
        with SmtpSink(folder / "sink", host=FAR_ADDRESS, port=SINK_PORT, netns=made.far,
                      ready=lambda: made.sink_ready(SINK_PORT)):
            ping_ms = made.ping()
            connects = made.tcp_rtts(SINK_PORT, 10)
            floor_ms = made.floor_ms(SINK_PORT, message_bytes, 12 if args.quick else 40)
        rtt_ms = ping_ms or (statistics.median(connects) if connects else 2 * delay_ms)
        for connections in counts:
            messages = max(200, 4 * connections, round(_ideal(connections, rtt_ms, 2) * seconds))
            with SmtpSink(folder / "sink", host=FAR_ADDRESS, port=SINK_PORT, netns=made.far,
                          ready=lambda: made.sink_ready(SINK_PORT)) as sink:
                workspace = make_workspace(folder / f"c{connections}", issue=issue, host=FAR_ADDRESS,
                                           port=SINK_PORT, connections=connections)
                build_database(workspace, messages)
                print(f"  dispatch of {messages:,} messages over {connections} connections ...", file=sys.stderr,
                      flush=True)
                dispatched = dispatch_once(workspace, messages, connections, sink=sink, netns=made.near,
                                           timeout=args.timeout or auto_timeout(messages))
            warn(dispatched, f"dispatch at {connections} connections")
            source_messages = max(connections * (2 if args.quick else 10), 100)
            with SmtpSink(folder / "sink", host=FAR_ADDRESS, port=SINK_PORT, netns=made.far,
                          ready=lambda: made.sink_ready(SINK_PORT)):
                print(f"  smtp-source: {source_messages:,} messages over {connections} sessions ...",
                      file=sys.stderr, flush=True)
                source = smtp_source(FAR_ADDRESS, SINK_PORT, sessions=connections, messages=source_messages,
                                     size=message_bytes, folder=folder / "logs", netns=made.near,
                                     timeout=auto_timeout(source_messages))
            if source.returncode != 0:
                print(f"warning: smtp-source: {source.describe_failure()}", file=sys.stderr)
            results.append(LatencyResult(connections, dispatched, source, source_messages))
    delayer_cpu = sum(delayer.cpu for delayer in made.delayers)
    delayer_lines = [delayer.summary for delayer in made.delayers if delayer.summary]

    rows = []
    for result in results:
        dispatched = result.run
        rate = dispatched.own_rate or dispatched.rate
        ideal2, ideal4, ideal5 = (_ideal(result.connections, rtt_ms, trips) for trips in (2, 4, 5))
        ratio = rate / ideal2
        source_rate = result.source_messages / result.source.wall if result.source and result.source.wall else 0.0
        floor_rate = result.connections * 1000 / floor_ms if floor_ms else 0.0
        rows.append([
            str(result.connections), f"{dispatched.sent:,}", f"{dispatched.finished.wall:.1f} s",
            rate_text(dispatched.rate), rate_text(rate), rate_text(ideal2), f"{ratio:.2f}",
            f"≥ {RATIO_TARGET:g}: " + ("met" if ratio >= RATIO_TARGET else "NOT met"),
            rate_text(ideal4), rate_text(ideal5),
            f"{rate / floor_rate:.2f}" if floor_rate else "-",
            f"{source_rate:,.0f} ({source_rate / ideal2:.2f})",
        ])
    header = ["Conns", "Sent", "Wall", "msg/s (wall)", "msg/s after start-up", "Ideal, 2 RTT", "Ratio", "Target",
              "Ideal, 4 RTT", "Ideal, 5 RTT", "Ratio to path floor", "smtp-source msg/s (ratio)"]
    table = report.format_table(header, rows, right=(0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11))
    measured = [
        f"`ping -U` {ping_ms:.1f} ms average" if ping_ms else "ping not available",
        f"TCP connect {statistics.median(connects):.1f} ms median" if connects else "",
    ]
    notes = [
        f"Path: two network namespaces joined by a veth pair ({NEAR_ADDRESS}/{PREFIX} ↔ {FAR_ADDRESS}/{PREFIX}), "
        f"delay by {made.method}; smtp-sink in the far namespace, the dispatch in the near one"
        + (f"; sysctls in both namespaces: {', '.join(made.sysctls)}." if made.sysctls else "."),
        f"Round trip: {', '.join(part for part in measured if part)}; the ideals use {rtt_ms:.1f} ms. "
        "Ideal, k RTT = connections / (k × RTT).",
        "msg/s after start-up = sent / the `elapsed` the command reports (render, ledger and sending); the ratio "
        "uses it. msg/s (wall) includes Python start-up.",
        (f"Path floor: a minimal pipelined client (one connection, raw socket, no ledger) takes "
         f"{floor_ms:.1f} ms per {message_bytes:,}-byte message = {floor_ms / rtt_ms:.2f} RTT, so at most "
         f"{2 * rtt_ms / floor_ms:.2f} of the 2-RTT ideal is reachable over this path with this kernel's TCP "
         f"(congestion control {_congestion_control()}). Ratio to path floor = msg/s after start-up / "
         "(connections × that client's rate)."
         if floor_ms else "Path floor: not measured (the probe failed)."),
        f"Each dispatch sends enough messages for about {seconds:g} s at the 2-RTT ideal (at least 200); "
        f"one message is {message_bytes:,} bytes, and each one's MAIL FROM its own signed return path "
        f"(`[sender] bounce_address = \"{BOUNCE_ADDRESS}\"`, VERP). smtp-source: `-d -s <conns> -m <conns × "
        f"{2 if args.quick else 10}, at least 100> -l {message_bytes}`; its ratio is to the same 2-RTT ideal.",
    ]
    if made.delayers:
        notes.append(f"The two delayer processes used {delayer_cpu:.1f} s of CPU in all, "
                     f"{delayer_cpu / max(made.lifetime, 1e-9):.0%} of one core over the benchmark's "
                     f"{made.lifetime:.0f} s, taken from the same 2 cores as the dispatch "
                     f"({'; '.join(delayer_lines)}).")
    report.publish(args, "latency", "Latency (B2): dispatch to a relay 30 ms away", command, table, notes,
                   "benchmarks/netns.py")
    return 0 if all(not result.run.problems() for result in results) else 1


def _congestion_control() -> str:
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "unknown"


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give connection counts, e.g. 8,32,128")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("latency benchmark")
    group.add_argument("--latency-connections", type=_counts, default=[8, 32, 128],
                       help="connection counts, comma-separated (default: 8,32,128)")
    group.add_argument("--latency-seconds", type=float, default=None,
                       help="about how long each dispatch runs at the ideal rate (default: 10; quick: 1.5)")
    group.add_argument("--netns-sysctl", action="append", default=[], metavar="KEY=VALUE",
                       help="a sysctl to set in both namespaces, e.g. net.ipv4.tcp_slow_start_after_idle=0"
                            " (repeatable; the table notes it)")
    group.add_argument("--delay-ms", type=float, default=15.0,
                       help="one-way delay added on each side of the veth, in ms (default: 15: 30 ms RTT)")
