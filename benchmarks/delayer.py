"""Delay every packet of a netfilter queue by a fixed time: netem's ``delay`` for kernels without netem.

``tc qdisc add dev X root netem delay 15ms`` is how the latency benchmark wants its
far relay, but some kernels are built without ``sch_netem`` (and without ``fq``/``etf``,
which could honour a BPF-set departure time). What such kernels usually still have is
the ``NFQUEUE`` target: an iptables rule hands each packet to a queue, the kernel holds
the packet until a program gives its verdict, and this program gives it ``delay`` later.
The packets are real TCP segments on the veth, held in the kernel; only their metadata
crosses to this process (``NFQNL_COPY_META``, GSO packets unsplit), and one batch
verdict accepts every packet up to an id, so the cost is small.

Run it inside the namespace whose incoming packets it delays, after the rule::

    iptables -t mangle -A PREROUTING -i veth0 -j NFQUEUE --queue-num 0
    python -m benchmarks.delayer --queue 0 --delay-ms 15

Incoming, not outgoing: a packet held on its sender's OUTPUT hook still counts against
the sending socket, and TCP small queues then throttle the connection (netem avoids that
by orphaning what it holds; this can't).

It prints ``ready`` once bound, runs until SIGTERM or SIGINT, then prints one line of
counts (``packets=… max_held=… late_ms_max=…``). Pure Python over a raw netlink socket:
no library, root (CAP_NET_ADMIN) only.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(kind: int, queue: int, attributes: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attributes
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


class Delayer:
    """One bound netfilter queue whose packets are accepted ``delay`` seconds after they arrive."""

    def __init__(self, queue: int, delay: float, maxlen: int) -> None:
        self.queue = queue
        self.delay = delay
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.held: collections.deque[tuple[float, int]] = collections.deque()
        self.packets = 0
        self.max_held = 0
        self.late_max = 0.0
        self._configure(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self._configure(
            _attr(NFQA_CFG_PARAMS, struct.pack("!IBxxx", 0, NFQNL_COPY_META)[:5])
            + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
            + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
            + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO))
        )

    def _configure(self, attributes: bytes) -> None:
        self.seq += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.queue, attributes, self.seq, NLM_F_REQUEST | NLM_F_ACK))
        while True:  # wait for the acknowledgement of this request (packets may come first)
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, f"nfqueue config: {os.strerror(-error)}")
                    return
                offset += (length + 3) & ~3

    def _receive(self, data: bytes, now: float) -> None:
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                position = offset + 20  # after nlmsghdr and nfgenmsg
                end = offset + length
                while position + 4 <= end:
                    attr_length, attr_kind = struct.unpack_from("=HH", data, position)
                    if attr_length < 4:
                        break
                    if attr_kind & NLA_TYPE_MASK == NFQA_PACKET_HDR:
                        (packet_id,) = struct.unpack_from("!I", data, position + 4)
                        self.held.append((now + self.delay, packet_id))
                        self.packets += 1
                        break
                    position += (attr_length + 3) & ~3
            offset += (length + 3) & ~3
        self.max_held = max(self.max_held, len(self.held))

    def _release(self, now: float) -> None:
        last = -1
        while self.held and self.held[0][0] <= now:
            due, last = self.held.popleft()
            self.late_max = max(self.late_max, now - due)
        if last >= 0:
            self.seq += 1
            # One batch verdict accepts every packet with an id up to ``last`` (ids only grow).
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
            self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, self.queue, verdict, self.seq))

    def run(self, stop: list[bool]) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not stop[0]:
            now = time.monotonic()
            timeout_ms = 200 if not self.held else max(0, (self.held[0][0] - now) * 1000)
            events = poller.poll(timeout_ms)
            now = time.monotonic()
            if events:
                for _ in range(64):  # drain what is there, without starving the releases
                    try:
                        data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    self._receive(data, now)
            self._release(time.monotonic())

    def close(self) -> None:
        # Accept whatever is still held, then unbind: the kernel drops a queue's packets at unbind.
        if self.held:
            self.held = collections.deque((0.0, packet_id) for _, packet_id in self.held)
            self._release(time.monotonic())
        try:
            self._configure(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, socket.AF_INET)))
        except OSError:
            pass
        self.sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delayer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, default=0, help="netfilter queue number (default: 0)")
    parser.add_argument("--delay-ms", type=float, required=True, help="how long to hold each packet, in ms")
    parser.add_argument("--maxlen", type=int, default=100_000, help="packets the kernel may hold (default: 100000)")
    args = parser.parse_args(argv)
    stop = [False]

    def request_stop(_signum: int, _frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    delayer = Delayer(args.queue, args.delay_ms / 1000, args.maxlen)
    print("ready", flush=True)
    try:
        delayer.run(stop)
    finally:
        delayer.close()
        print(f"packets={delayer.packets} max_held={delayer.max_held} late_ms_max={delayer.late_max * 1000:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
