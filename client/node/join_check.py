"""Why an edge cannot join its cloud: one check per cause, each answering within seconds.

Flower's SuperNode retries a cloud it cannot reach with "Connection attempt failed, retrying"
and keeps the reason at DEBUG level, so a device whose address, port, certificate or key is
wrong waits forever without saying why. `unikd edge` runs these checks first, in the order the
SuperNode's own connection needs them, and names the first one that fails in one line:

  address   the SuperLink's host name resolves (getaddrinfo, in a thread with a deadline)
  port      a TCP connection to it is accepted
  tls       the TLS handshake verifies the cloud's certificate against --ca for that host name,
            as the SuperNode's HTTPS client does (ssl.create_default_context(cafile=ca))
  node key  the node key parses as Flower reads it, and the cloud lets it in: one signed
            ActivateNode call, the SuperNode's own first call (client/node/fleet_probe.py)
  app key   --app-key parses as the operator's Ed25519 public key. Whether the operator signs
            this cloud's runs with it can only be seen on a run's bundle: the executor checks
            each one and logs a refusal in one line (client/node/executor.py).

A failure caused by a file on this device is `local`: waiting cannot fix it. `unikd edge
--check` runs the checks once; `unikd edge` repeats them with a backoff (`wait_until_joinable`)
until they pass, logging each failed attempt's cause and the time of the next one. No check
prints a key's contents.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import UnikdError

CHECK_TIMEOUT = 5.0  # seconds each network step may take (name lookup, connect, handshake, call)
FIRST_RETRY, MAX_RETRY = 1.0, 60.0  # the backoff between attempts doubles up to a minute

# OpenSSL verify codes (X509_V_ERR_*) the TLS check names a cause for
NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
UNKNOWN_ISSUER = {2, 18, 19, 20, 21}  # no issuer certificate / self-signed / not our CA
EXPIRED, NOT_YET_VALID = 10, 9
NOT_TLS = {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST",
           "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_EOF_WHILE_READING"}


@dataclass(frozen=True)
class JoinTarget:
    """What an edge dials and what it trusts: `unikd edge`'s own arguments."""

    host: str
    port: int
    ca: Path | None = None
    key: Path | None = None
    app_key: Path | None = None
    insecure: bool = False
    allow_unsigned: bool = False
    timeout: float = CHECK_TIMEOUT

    @property
    def address(self) -> str:
        """host:port as the SuperNode dials it (an IPv6 host in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def of(cls, superlink: str, **kwargs) -> JoinTarget:
        """The target for `--superlink HOST:PORT` (UnikdError when it is not one)."""
        host, sep, port = superlink.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UnikdError(f"--superlink {superlink!r}: give HOST:PORT")
        return cls(host, int(port), **kwargs)


@dataclass(frozen=True)
class Result:
    """One check's outcome: what was found (ok), or the one-line cause (failed)."""

    check: str
    ok: bool
    line: str
    local: bool = False  # failed because of a file on this device: retrying cannot fix it


def passed(check: str, line: str) -> Result:
    """A check that passed, with what it found."""
    return Result(check, True, line)


def failed(check: str, line: str, local: bool = False) -> Result:
    """A check that failed, with its one-line cause."""
    return Result(check, False, line, local)


# ---------------------------------------------------------------- the network checks


def check_address(t: JoinTarget) -> tuple[Result, list[tuple]]:
    """The host name resolves; also returns getaddrinfo's TCP entries for the port check."""
    if t.host.lower().rstrip(".").split(".")[-1] == "invalid":
        # RFC 6761 6.4: resolvers should answer `.invalid` names negatively at once
        return failed("address", f"the name {t.host} does not resolve (.invalid names never "
                                 f"do, RFC 6761): check --superlink"), []
    box: dict = {}

    def lookup() -> None:
        try:
            box["found"] = socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            box["error"] = err

    worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout
    worker.start()
    worker.join(t.timeout)
    if worker.is_alive():
        return failed("address", f"the name {t.host} did not resolve within {t.timeout:g} s: "
                                 f"check this device's DNS"), []
    if "error" in box:
        err = box["error"]
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return failed("address", f"the name {t.host} does not resolve ({why}): check "
                                 f"--superlink and this device's DNS"), []
    ips = list(dict.fromkeys(entry[4][0] for entry in box["found"]))
    where = f"address {t.host}" if ips == [t.host] else f"{t.host} resolves to {', '.join(ips)}"
    return passed("address", where), box["found"]


def check_port(t: JoinTarget, found: list[tuple]) -> Result:
    """A TCP connection to the port is accepted at one of the resolved addresses."""
    refused, other = [], []
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(t.timeout)
                sock.connect(sockaddr)
            return passed("port", f"port {t.port} open")
        except ConnectionRefusedError:
            refused.append(sockaddr[0])
        except TimeoutError:
            other.append(f"no answer from {sockaddr[0]} within {t.timeout:g} s: a firewall "
                         f"drops the connection, or the host is down")
        except OSError as err:
            other.append(f"cannot connect to {sockaddr[0]}: {err.strerror or err}")
    if other:
        return failed("port", f"port {t.port}: {other[0]}")
    return failed("port", f"port {t.port} is closed on {', '.join(refused)} (connection "
                          f"refused): is the cloud up, and is {t.port} its public port?")


def check_tls(t: JoinTarget) -> Result:
    """The TLS handshake verifies the cloud's certificate against --ca for the host name."""
    if t.insecure:
        return passed("tls", "TLS off (--insecure)")
    if t.ca is None:
        return failed("tls", "--ca is required: the CA certificate (ca.crt) the cloud's "
                             "certificate must chain to", local=True)
    try:
        context = ssl.create_default_context(cafile=str(t.ca))
    except (OSError, ssl.SSLError) as err:
        why = "not found" if isinstance(err, FileNotFoundError) else \
            f"not a PEM certificate ({getattr(err, 'reason', None) or err.strerror or err})"
        return failed("tls", f"--ca {t.ca}: {why}", local=True)
    try:
        raw = socket.create_connection((t.host, t.port), timeout=t.timeout)
    except OSError as err:  # it was open a moment ago (the port check)
        return failed("tls", f"TLS: cannot connect to {t.address} again: {err.strerror or err}")
    try:
        with raw, context.wrap_socket(raw, server_hostname=t.host) as tls:
            cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as err:
        return failed("tls", "TLS: " + verify_cause(t, err))
    except TimeoutError:
        return failed("tls", f"TLS: {t.address} accepted the connection but gave no TLS "
                             f"answer within {t.timeout:g} s: not a TLS server?")
    except ssl.SSLError as err:
        if err.reason in NOT_TLS:
            return failed("tls", f"TLS: {t.address} does not speak TLS ({err.reason}): a "
                                 f"plain HTTP or TCP service, or a cloud started with "
                                 f"--insecure")
        return failed("tls", f"TLS: the handshake with {t.address} failed: "
                             f"{err.reason or err.strerror or err}")
    except OSError as err:  # reset or closed during the handshake
        return failed("tls", f"TLS: {t.address} closed the connection during the handshake "
                             f"({err.strerror or type(err).__name__}): not a TLS server?")
    return passed("tls", f"TLS certificate for {t.host} chains to {t.ca.name} (valid until "
                         f"{cert.get('notAfter', '?')})")


def verify_cause(t: JoinTarget, err: ssl.SSLCertVerificationError) -> str:
    """Why the cloud's certificate did not verify, naming what it holds."""
    cert = presented_certificate(t)
    code = err.verify_code
    if code in NAME_MISMATCH:
        names = ", ".join(certificate_names(cert)) if cert is not None else "other names"
        return (f"the cloud's certificate is for {names}, not {t.host}: dial a name it "
                f"carries, or have the operator reissue it with --name {t.host}")
    if code in UNKNOWN_ISSUER:
        issuer = f" (issued by {cert.issuer.rfc4514_string()})" if cert is not None else ""
        return (f"the cloud's certificate{issuer} does not chain to --ca {t.ca}: wrong CA "
                f"file, or not your cloud")
    if code == EXPIRED and cert is not None:
        return (f"the cloud's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d} (by "
                f"this device's clock): the operator renews it, or this clock is wrong")
    if code == NOT_YET_VALID and cert is not None:
        return (f"the cloud's certificate is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: is this device's clock right?")
    return f"the cloud's certificate does not verify against --ca {t.ca}: {err.verify_message}"


def presented_certificate(t: JoinTarget):
    """The certificate the cloud presents, fetched without verifying it (only to describe a
    failed verification; nothing is trusted or sent over this connection); None if it
    cannot be had."""
    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((t.host, t.port), timeout=t.timeout) as raw, \
                context.wrap_socket(raw, server_hostname=t.host) as tls:
            der = tls.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None
    except (OSError, ValueError):
        return None


def certificate_names(cert) -> list[str]:
    """The DNS names and IP addresses a certificate is for (its subjectAltNames)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [attr.value for attr in cert.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME)]
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


# ---------------------------------------------------------------- the keys


def load_node_key(path: Path):
    """The node's EC private key, read as Flower's SuperNode reads it (OpenSSH format), or a
    local Result saying why not. Never reveals the key."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    if not path.is_file():
        return failed("node key", f"--key {path}: not found (make it on this device with "
                                  f"`unikd edge-keygen {path}`)", local=True)
    if path.stat().st_mode & 0o077:
        return failed("node key", f"--key {path}: readable by others; chmod 600 it", local=True)
    data = path.read_bytes()
    if data.lstrip().startswith((b"ecdsa-sha2-", b"ssh-")):
        return failed("node key", f"--key {path}: a public key; give the private key (the "
                                  f"file without .pub)", local=True)
    try:
        key = load_ssh_private_key(data, None)
    except (ValueError, TypeError):
        return failed("node key", f"--key {path}: not an unencrypted OpenSSH private key "
                                  f"(make one with `unikd edge-keygen`)", local=True)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return failed("node key", f"--key {path}: node authentication needs an ECDSA key on a "
                                  f"NIST curve (`unikd edge-keygen` makes one)", local=True)
    return key


def check_node_key(t: JoinTarget) -> Result:
    """The cloud lets this node's key in (its SuperNode's first call, then undone)."""
    if t.key is None:
        return passed("node key", "no node key (--key): not checked")
    if t.insecure:
        return failed("node key", "--key needs TLS: node authentication is refused without it",
                      local=True)
    key = load_node_key(t.key)
    if isinstance(key, Result):
        return key
    from client.node.fleet_probe import activate_once
    from shared.platform import flower_pins

    try:
        flower_pins.check(flower_pins.FLEET_PROBE)  # the internals the probe was written for
    except flower_pins.FlowerChanged as err:
        return failed("node key", str(err), local=True)
    answer = activate_once(t.address, t.ca, key, t.timeout)
    if answer.kind == "activated":
        return passed("node key", f"node key {t.key.name} registered (node {answer.node_id})")
    return failed("node key", refusal_cause(t, answer))


def refusal_cause(t: JoinTarget, answer) -> str:
    """The one-line cause for a cloud's refusal of this node's ActivateNode call."""
    if answer.kind == "refused":
        return (f"the cloud refused node key {t.key} ({answer.detail}): its public key is not "
                f"registered there (the operator runs `unikd certs register "
                f"{t.key.name}.pub`), or a node with this key is online already")
    if answer.kind == "unauthenticated":
        clock = ""
        if answer.skew is not None and abs(answer.skew) >= 5:
            clock = (f": this device's clock is {abs(answer.skew):.0f} s "
                     f"{'ahead of' if answer.skew > 0 else 'behind'} the cloud's")
        return (f"the cloud refused node key {t.key}'s signed request (HTTP 401, "
                f"{answer.detail}){clock or ': check this device clock'}")
    if answer.kind == "version":
        return f"the cloud runs a Flower this edge cannot talk to: {answer.detail}"
    if answer.kind == "unreachable":
        return (f"no answer from {t.address} to the node's first call within {t.timeout:g} s "
                f"({answer.detail})")
    if answer.status == 404:
        return (f"{t.address} has no Flower Fleet API (HTTP 404): not the cloud's public "
                f"port?")
    if answer.status in (502, 503, 504):
        return (f"the cloud's proxy at {t.address} answers, but its SuperLink does not (HTTP "
                f"{answer.status}): the cloud is starting, or its SuperLink is down")
    return f"the cloud answered the node's first call with HTTP {answer.status}: {answer.detail}"


def check_app_key(t: JoinTarget) -> Result:
    """--app-key parses as the operator's Ed25519 public key (a PEM file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = t.app_key
    if path is None:
        if t.allow_unsigned:
            return passed("app key", "app signatures not checked (--allow-unsigned-apps)")
        return failed("app key", "--app-key OPERATOR.pub is required: the edge runs only app "
                                 "bundles the operator signed", local=True)
    if not path.is_file():
        return failed("app key", f"--app-key {path}: not found (the operator's `unikd app "
                                 f"keygen` writes it beside the private key, as KEY.pub)",
                      local=True)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        if b"PRIVATE KEY" in data:
            why = "a private key; give the operator's public key (KEY.pub), and delete this copy"
        elif data.lstrip().startswith((b"ecdsa-sha2-", b"ssh-")):
            why = "an OpenSSH public key (a node key?), not the operator's app key"
        else:
            why = "not a PEM public key"
        return failed("app key", f"--app-key {path}: {why}", local=True)
    if not isinstance(key, Ed25519PublicKey):
        return failed("app key", f"--app-key {path}: not an Ed25519 public key, as the "
                                 f"operator's app key is ({type(key).__name__})", local=True)
    return passed("app key", f"app key {path.name} is an Ed25519 public key (a run's "
                             f"signature is checked when its bundle arrives)")


# ---------------------------------------------------------------- running them


def run_checks(t: JoinTarget) -> list[Result]:
    """The checks in order, up to the first that fails (each needs the ones before it)."""
    found, addresses = check_address(t)
    results = [found]
    steps: list[Callable[[], Result]] = [lambda: check_port(t, addresses),
                                         lambda: check_tls(t), lambda: check_node_key(t),
                                         lambda: check_app_key(t)]
    for step in steps:
        if not results[-1].ok:
            break
        results.append(step())
    return results


def summary(t: JoinTarget, results: list[Result]) -> str:
    """One line: what was checked (all passed), or the first failure's cause."""
    if results[-1].ok:
        return f"unikd: {t.address} can be joined: " + "; ".join(r.line for r in results)
    return f"unikd: cannot join {t.address}: {results[-1].line}"


def retry_delays(first: float = FIRST_RETRY, cap: float = MAX_RETRY) -> Iterator[float]:
    """1, 2, 4, ... seconds, then `cap` for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def wait_until_joinable(t: JoinTarget, max_retries: int | None = None,
                        say: Callable[[str], None] = print,
                        sleep: Callable[[float], None] = time.sleep,
                        on_attempt: Callable[[list[Result]], None] | None = None
                        ) -> list[Result] | None:
    """Run the checks until they pass (their results), saying why each attempt failed and
    when the next one is; None when a local cause stops it, or after `max_retries` retries.
    `on_attempt` gets each attempt's results (the node's metrics)."""
    delays = retry_delays()
    attempt = 0
    while True:
        attempt += 1
        results = run_checks(t)
        if on_attempt is not None:
            on_attempt(results)
        if results[-1].ok:
            return results
        cause = summary(t, results)
        if results[-1].local:
            say(cause)
            return None
        if max_retries is not None and attempt > max_retries:
            say(f"{cause}; giving up after {attempt} attempt{'s' * (attempt > 1)} "
                f"(--max-retries {max_retries})")
            return None
        wait = next(delays)
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + wait))
        say(f"{cause} (attempt {attempt}; next try in {wait:g} s, at {at})")
        sleep(wait)
