"""TLS material for a deployment, made with `cryptography` (no hand-rolled crypto).

`unikd certs init` runs on the operator's machine and writes a CA and a server certificate
whose subjectAltNames list every name and address the edges dial (127.0.0.1 always: the proxy
verifies the SuperLink on loopback by it):

    <dir>/ca.crt  ca.key            the federation's root: ca.key never leaves this machine
    <dir>/server.pem server.key     the SuperLink's (and its proxy's) certificate

The cloud receives ca.crt, server.pem and server.key (`--cloud-dir`); a device receives ca.crt.
Node keys are made on the devices (`unikd edge-keygen`), and only their public halves are
registered (`unikd certs register`): the SuperLink authenticates nodes by those, not by TLS
client certificates. `make_node_key` / `make_bundle` below make node keys centrally for tests
and development only; no command exposes them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import UnikdError

CURVE = ec.SECP384R1  # NIST P-384: accepted by Flower's node auth and by every TLS stack
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertPaths:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_crt(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def nodes(self) -> Path:
        return self.dir / "nodes"

    def node_key(self, name: str) -> Path:
        return self.nodes / name

    def node_pub(self, name: str) -> Path:
        return self.nodes / f"{name}.pub"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """A private key, readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names: list[str] | tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_ca(out: Path, common_name: str = "unikd-ca", days: int = 3650,
            overwrite: bool = False) -> CertPaths:
    """A self-signed root: ECDSA P-384, CA:TRUE (critical), may sign certificates only."""
    paths = CertPaths(Path(out))
    if paths.ca_crt.exists() and not overwrite:
        raise UnikdError(f"{paths.ca_crt} exists; pass --force to replace the CA (every edge "
                         f"then needs the new ca.crt)")
    key = ec.generate_private_key(CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA384()))
    _write_private(paths.ca_key, _pem_key(key))
    _write_public(paths.ca_crt, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    paths = CertPaths(Path(out))
    if not paths.ca_crt.is_file() or not paths.ca_key.is_file():
        raise UnikdError(f"{paths.dir}: no CA here (ca.crt + ca.key); run `unikd certs init` first")
    cert = x509.load_pem_x509_certificate(paths.ca_crt.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    return cert, key  # type: ignore[return-value]


def make_server_cert(out: Path, names: list[str] | tuple[str, ...] = DEFAULT_NAMES,
                     days: int = 825) -> CertPaths:
    """The SuperLink's certificate: every DNS name / IP an edge dials goes into the SANs."""
    if not names:
        raise UnikdError("the server certificate needs at least one name or IP (--name)")
    paths = CertPaths(Path(out))
    ca_cert, ca_key = load_ca(paths.dir)
    key = ec.generate_private_key(CURVE())
    cn = next((n for n in names if not _is_ip(n)), names[0])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(_san(list(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA384()))
    _write_private(paths.server_key, _pem_key(key))
    _write_public(paths.server_crt, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def check_node_name(name: str) -> str:
    if not NODE_NAME.match(name):
        raise UnikdError(f"node name {name!r}: use letters, digits, '-', '_' or '.' (max 63)")
    return name


def make_node_key(out: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Tests and development only: a SuperNode's auth key pair in OpenSSH format (what
    flower-supernode and `flwr supernode register` read), made away from its device.
    Returns (private key, public key)."""
    paths = CertPaths(Path(out))
    check_node_name(name)
    priv, pub = paths.node_key(name), paths.node_pub(name)
    if priv.exists() and not overwrite:
        raise UnikdError(f"{priv} exists; pass --force to replace it (then register the new key)")
    key = ec.generate_private_key(CURVE())
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    _write_public(pub, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return priv, pub


def init_all(out: Path, names: list[str] | tuple[str, ...] = DEFAULT_NAMES,
             nodes: list[str] | tuple[str, ...] = (), overwrite: bool = False,
             ca_days: int = 3650, server_days: int = 825) -> CertPaths:
    paths = make_ca(out, overwrite=overwrite, days=ca_days)
    make_server_cert(out, names, days=server_days)
    for n in nodes:
        make_node_key(out, n, overwrite=overwrite)
    return paths


def cloud_files(out: Path, dest: Path, edge: bool = False) -> Path:
    """Copy what the cloud needs (ca.crt, server.pem, server.key 0600) into `dest`, or with
    `edge` only ca.crt: never ca.key."""
    paths = CertPaths(Path(out))
    if not (paths.ca_crt.is_file() and paths.server_crt.is_file() and paths.server_key.is_file()):
        raise UnikdError(f"{paths.dir}: no CA and server certificate; run `unikd certs init`")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _write_public(dest / "ca.crt", paths.ca_crt.read_bytes())
    if not edge:
        _write_public(dest / "server.pem", paths.server_crt.read_bytes())
        _write_private(dest / "server.key", paths.server_key.read_bytes())
    return dest


def make_bundle(out: Path, name: str, dest: Path) -> Path:
    """Tests and development only: `ca.crt` and a centrally made `node.key` (0600).

    Copy this folder to the device (or mount it into its container); nothing else leaves.
    """
    paths = CertPaths(Path(out))
    check_node_name(name)
    if not paths.ca_crt.is_file():
        raise UnikdError(f"{paths.dir}: no ca.crt; run `unikd certs init` first")
    if not paths.node_key(name).is_file():
        raise UnikdError(f"{paths.node_key(name)}: no key for node {name!r}; run "
                         f"`unikd certs node {name}` first")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _write_public(dest / "ca.crt", paths.ca_crt.read_bytes())
    _write_private(dest / "node.key", paths.node_key(name).read_bytes())
    _write_public(dest / "node.key.pub", paths.node_pub(name).read_bytes())
    return dest


def describe(out: Path) -> dict:
    """What is in a certs folder: CA subject, server SANs and expiry, node keys."""
    paths = CertPaths(Path(out))
    info: dict = {"dir": str(paths.dir)}
    if paths.ca_crt.is_file():
        ca = x509.load_pem_x509_certificate(paths.ca_crt.read_bytes())
        info["ca"] = {"subject": ca.subject.rfc4514_string(),
                      "not_after": ca.not_valid_after_utc.isoformat()}
    if paths.server_crt.is_file():
        srv = x509.load_pem_x509_certificate(paths.server_crt.read_bytes())
        san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        info["server"] = {"names": [str(v.value) for v in san],
                          "not_after": srv.not_valid_after_utc.isoformat()}
    if paths.nodes.is_dir():
        info["nodes"] = sorted(p.stem for p in paths.nodes.glob("*.pub"))
    return info
