"""Operator signatures on app bundles: edges run only code the operator signed.

The operator holds an Ed25519 key (made offline with `unikd app keygen`); every edge holds its
public half (`unikd edge --app-key operator.pub`). A Flower app bundle (FAB) is named by the
SHA-256 of its bytes (`flwr run` computes `hashlib.sha256(fab_bytes).hexdigest()`), and the
SuperNode receives that hash, the bundle and the run's config together. The signature:

    Ed25519(key, b"fedunikd-app-v1\\0" + fab_hash_hex.encode())

travels as the run-config value `app-signature` (base64), which `flwr run --run-config` sets and
every SuperNode receives with the run. The domain prefix keeps this signature from meaning
anything in another protocol that uses the same key. Only `cryptography` primitives are used.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import UnikdError
from shared.platform.secrets import write_secret

DOMAIN = b"fedunikd-app-v1\0"
RUN_CONFIG_KEY = "app-signature"  # declared in pyproject [tool.flwr.app.config]


def signed_message(fab_hash: str) -> bytes:
    """What is signed: the domain tag, then the bundle's hex SHA-256 (lower case)."""
    if len(fab_hash) != 64 or any(c not in "0123456789abcdef" for c in fab_hash):
        raise UnikdError(f"app bundle hash {fab_hash!r}: expected 64 lower-case hex digits")
    return DOMAIN + fab_hash.encode("ascii")


def generate_key(path: Path, overwrite: bool = False) -> Path:
    """An Ed25519 key pair: `path` (PKCS#8 PEM, 0600) and `path`.pub; returns the .pub path."""
    path = Path(path).expanduser()
    pub = path.with_name(path.name + ".pub")
    if path.exists() and not overwrite:
        raise UnikdError(f"{path} exists; pass --force to replace it (every edge then needs the "
                         f"new {pub.name})")
    key = Ed25519PrivateKey.generate()
    write_secret(path, key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UnikdError(f"app signing key {path}: not found (make one with `unikd app keygen`)")
    if path.stat().st_mode & 0o077:
        raise UnikdError(f"app signing key {path}: readable by others; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise UnikdError(f"app signing key {path}: not a PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UnikdError(f"app signing key {path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UnikdError(f"operator app key {path}: not found (the operator's `unikd app "
                         f"keygen` writes it next to the private key, as KEY.pub)")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as err:
        raise UnikdError(f"operator app key {path}: not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UnikdError(f"operator app key {path}: not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, fab_hash: str) -> str:
    """The base64 signature for the bundle with this hash."""
    return base64.b64encode(key.sign(signed_message(fab_hash))).decode("ascii")


def check(public: Ed25519PublicKey, fab_hash: str, signature: str) -> str | None:
    """None when `signature` is the operator's over `fab_hash`, else why not (for the log)."""
    if not signature:
        return "the run carries no app signature (submit it with `unikd submit --sign-key`)"
    try:
        raw = base64.b64decode(signature, validate=True)
        public.verify(raw, signed_message(fab_hash))
    except (binascii.Error, ValueError):
        return "the app signature is not valid base64"
    except InvalidSignature:
        return (f"the app signature does not verify for bundle {fab_hash[:12]} with the "
                f"operator's key (another key, or another bundle)")
    except UnikdError as err:
        return str(err)
    return None
