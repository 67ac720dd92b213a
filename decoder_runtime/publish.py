"""ZeroMQ output: one PUB-style socket, non-blocking, that no subscriber can slow down.

The socket is an XPUB (a PUB that also reports subscriptions, so a caller can wait for the
first subscriber before streaming). Sends use zmq.NOBLOCK under a send high-water mark
(SNDHWM, per subscriber): when a subscriber stops reading, ZeroMQ drops *that subscriber's*
messages once its queue is full and the decoder never waits; other subscribers are not
affected. Such drops happen inside ZeroMQ and are invisible to the sender: a subscriber sees
them as gaps in `seq`. A send the socket itself refuses (zmq.Again) is counted in `drops`.

Binding is loopback-only unless `allow_remote` is given; a non-loopback socket can (and
should) use CURVE: the server loads its secret certificate (made by
`zmq.auth.create_certificates(dir, "server")`) and accepts either any client that knows the
server's public key or only clients whose public certificates are in `curve_clients`.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from decoder_runtime.messages import TOPIC

DEFAULT_ADDR = "tcp://127.0.0.1:5555"
_MORE = zmq.SNDMORE | zmq.NOBLOCK


class PublishError(RuntimeError):
    """The output socket cannot be set up as asked; the message says why."""


def is_loopback(addr: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on 127.0.0.0/8, ::1 or localhost."""
    scheme, sep, rest = addr.partition("://")
    if not sep:
        raise PublishError(f"{addr!r} is not a ZeroMQ endpoint (expected e.g. {DEFAULT_ADDR})")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: not provably loopback


def check_endpoint(addr: str, error: type[Exception] = PublishError) -> None:
    """Refuse, before anything binds, an endpoint ZeroMQ would reject late or misread.

    tcp:// needs a host and a port in 1..65535 (or '*' for an ephemeral one); ipc:// and
    inproc:// need a name.
    """
    scheme, sep, rest = addr.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise error(f"{addr!r} is not a ZeroMQ endpoint (expected e.g. {DEFAULT_ADDR}, ipc://NAME or 'none')")
    if scheme != "tcp":
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise error(f"{addr!r}: a tcp endpoint needs host:port, e.g. {DEFAULT_ADDR}")
    if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise error(f"{addr!r}: port must be 1..65535 (or *), got {port!r}")


class Publisher:
    """Non-blocking velocity publisher; `send` never waits for anyone."""

    def __init__(self, addr: str = DEFAULT_ADDR, *, hwm: int = 1000, allow_remote: bool = False,
                 curve_secret: Path | None = None, curve_clients: Path | None = None,
                 context: zmq.Context | None = None, topic: bytes = TOPIC) -> None:
        check_endpoint(addr)
        if not is_loopback(addr) and not allow_remote:
            raise PublishError(f"refusing to bind {addr}: not a loopback address (pass --allow-remote, "
                               "ideally with --curve-secret, to publish beyond this machine)")
        self.addr = addr
        self.topic = topic  # the topic frame of every message (another stream, e.g. b"task", beside `velocity`)
        self.drops = 0
        self._ctx = context or zmq.Context.instance()
        self._auth: ThreadAuthenticator | None = None
        self._scratch: zmq.Socket | None = None  # warm()'s socket with no peer
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.RCVHWM, 1000)  # subscription notices; excess ones are dropped
        self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber, not only the first per topic
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self._setup_curve(Path(curve_secret), curve_clients)
        try:
            self._sock.bind(addr)
        except zmq.ZMQError as e:
            self.close()
            raise PublishError(f"cannot bind {addr}: {e}") from None

    def _setup_curve(self, secret: Path, clients: Path | None) -> None:
        if not zmq.has("curve"):
            raise PublishError("CURVE requested but this libzmq was built without CURVE support")
        try:
            public, secret_key = zmq.auth.load_certificate(secret)
        except (OSError, ValueError) as e:
            raise PublishError(f"{secret}: cannot load a CURVE certificate ({e})") from None
        if secret_key is None:
            raise PublishError(f"{secret}: holds a public key only; the server needs its secret certificate")
        if clients is not None and not Path(clients).is_dir():
            raise PublishError(f"{clients}: not a folder of authorised client public certificates")
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(clients) if clients else zmq.auth.CURVE_ALLOW_ANY)
        self._sock.curve_secretkey = secret_key
        self._sock.curve_publickey = public
        self._sock.curve_server = True

    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Block until a subscriber has subscribed (or the timeout passes)."""
        if self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            self._sock.recv(zmq.NOBLOCK)
            return True
        return False

    def send(self, body: bytes, topic: bytes | None = None) -> bool:
        """Publish one message body under `topic` (default: this publisher's); False if it was dropped."""
        try:
            self._sock.send(topic or self.topic, _MORE)  # a message's parts are queued atomically
            self._sock.send(body, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.drops += 1
            return False

    def warm(self, body: bytes) -> None:
        """The send path at real pace, delivering nothing (decoder_runtime.warm's pass before a bin).

        The two sends go to a scratch inproc socket with no peer (the same pyzmq/libzmq code);
        the live socket only has its command mailbox checked (ZMQ_EVENTS): libzmq checks it on
        a send at most once per ~1 ms, so at 40 Hz every send pays that check (a poll system
        call) cold; here it runs warm just before the bin (measured, 3 rounds at 40 Hz: publish stage
        p50 15.6-20.5 -> 14.0-14.4 us). Nothing reaches a subscriber: a real send could not be hidden from one
        subscribed to every topic."""
        if self._scratch is None:
            self._scratch = self._ctx.socket(zmq.XPUB)
            self._scratch.setsockopt(zmq.LINGER, 0)
            self._scratch.bind(f"inproc://spikestream-warm-{id(self)}")
        self._scratch.send(self.topic, _MORE)
        self._scratch.send(body, zmq.NOBLOCK)
        self._sock.getsockopt(zmq.EVENTS)

    def close(self, linger_s: float = 0.5) -> None:
        """Give queued messages up to `linger_s` to leave, then close."""
        if self._scratch is not None:
            self._scratch.close(linger=0)
            self._scratch = None
        if not self._sock.closed:
            self._sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
            self._sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def connect_subscriber(addr: str, *, server_key: Path | None = None, client_cert: Path | None = None,
                       rcvhwm: int = 100_000, context: zmq.Context | None = None) -> zmq.Socket:
    """A SUB socket on the velocity topic (CURVE client when the server's public key is given)."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        try:
            server_public, _ = zmq.auth.load_certificate(server_key)
            if client_cert is not None:
                public, secret = zmq.auth.load_certificate(client_cert)
                if secret is None:
                    raise ValueError("it holds no secret key")
            else:
                public, secret = zmq.curve_keypair()
        except (OSError, ValueError) as e:
            sock.close()
            raise PublishError(f"cannot load CURVE keys ({e})") from None
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.connect(addr)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    return sock
