"""Secure-aggregation maths both sides use: field encoding, masks, share encryption, Shamir.

Nothing here is a new primitive. Composed from maintained libraries:

* key agreement: X25519 (`cryptography`), one fresh key pair per purpose per round;
* key derivation: HKDF-SHA256 with an `info` naming the purpose and the round;
* share encryption: AES-256-GCM (random 96-bit nonce, the sender/receiver/round as AAD);
* mask expansion: the ChaCha20 keystream (256-bit key from HKDF, fixed nonce: every key is
  used for one round only), read as little-endian uint64 words;
* secret sharing: PyCryptodome's Shamir over GF(2^128), 16-byte secrets (an X25519 private key
  is shared as two 16-byte halves with the same participant indices).

The field is Z_{2^64}: numpy uint64 addition wraps modulo 2^64, and a sum decodes as a signed
int64. An update is clipped to L2 norm <= C on the node, then encoded as round(v * 2^bits / C):
|each coordinate| <= 2^bits before noise, far below 2^63 / n, so the sum never wraps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import UnikdError

Vector = np.ndarray  # uint64 words of Z_{2^64}
RAW = serialization.Encoding.Raw


class SecAggError(UnikdError):
    """A secure-aggregation check failed (threshold, sets, range, authentication)."""


# ---------------------------------------------------------------- update <-> vector


def flatten(update: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[np.ndarray, list]:
    """(float64 vector, layout) over every floating array, in sorted (record, name) order."""
    parts, layout = [], []
    for rec in sorted(update):
        for name in sorted(update[rec]):
            t = update[rec][name]
            if t.is_floating_point():
                parts.append(t.detach().double().flatten().numpy())
                layout.append((rec, name, tuple(t.shape)))
    return (np.concatenate(parts) if parts else np.zeros(0)), layout


def unflatten(vec: np.ndarray, layout: list) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    i = 0
    for rec, name, shape in layout:
        n = int(np.prod(shape)) if shape else 1
        out.setdefault(rec, {})[name] = torch.from_numpy(
            vec[i:i + n].reshape(shape).astype(np.float32))
        i += n
    return out


def clip_and_check(vec: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """The node's own checks before masking (the cloud cannot reject a masked update):
    finite, then scaled to L2 norm <= clip. Returns (clipped, norm before)."""
    if not np.isfinite(vec).all():
        raise SecAggError("the update holds NaN or Inf; it must not be masked into the sum")
    norm = float(np.linalg.norm(vec))
    return (vec * min(1.0, clip / norm) if norm > 0 else vec), norm


def encode(vec: np.ndarray, clip: float, bits: int) -> Vector:
    """Signed fixed point into Z_{2^64}: round(v * 2^bits / clip) mod 2^64."""
    q = np.rint(vec * (2.0**bits / clip))
    limit = 2.0**62 / 1024  # range check: far beyond any clipped (+noise) value
    if np.abs(q).max(initial=0.0) > limit:
        raise SecAggError("an encoded coordinate is out of range; update not masked")
    return q.astype(np.int64).view(np.uint64)


def decode(total: Vector, clip: float, bits: int) -> np.ndarray:
    """A sum of encoded vectors back to float64 (signed interpretation of Z_{2^64})."""
    return total.view(np.int64).astype(np.float64) * (clip / 2.0**bits)


# ---------------------------------------------------------------- keys, masks, encryption


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def key_from(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(own_private: bytes, peer_public: bytes, purpose: str, rnd: int) -> bytes:
    """HKDF-SHA256(X25519(own, peer)) -> 32 bytes, bound to the purpose and the round."""
    shared = key_from(own_private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=f"unikd-secagg/{purpose}/{rnd}".encode()).derive(shared)


def expand(seed: bytes, length: int, purpose: str) -> Vector:
    """`length` uniform uint64 words: the ChaCha20 keystream under HKDF(seed, purpose)."""
    key = HKDF(hashes.SHA256(), 32, salt=None, info=f"unikd-secagg/prg/{purpose}".encode()
               ).derive(seed)
    enc = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\0" * (8 * length)), dtype="<u8").astype(np.uint64)


def pairwise_mask(own_private: bytes, peer_public: bytes, own_id: int, peer_id: int, rnd: int,
                  length: int) -> Vector:
    """+PRG(s_ij) for the smaller id, -PRG(s_ij) for the larger: the pair cancels in a sum."""
    words = expand(agree(own_private, peer_public, "mask", rnd), length, "pair")
    return words if own_id < peer_id else (np.uint64(0) - words)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    except InvalidTag:
        raise SecAggError("a share failed authentication; it was not sent by its peer") from None


# ---------------------------------------------------------------- Shamir (PyCryptodome)


def split_secret(secret: bytes, threshold: int, n: int) -> list[bytes]:
    """Shares 1..n of a secret of 16k bytes (each 16-byte block shared alone), k bytes each."""
    from Crypto.Protocol.SecretSharing import Shamir

    if len(secret) % 16:
        raise SecAggError("Shamir secrets are 16-byte blocks")
    blocks = [Shamir.split(threshold, n, secret[i:i + 16]) for i in range(0, len(secret), 16)]
    return [b"".join(blk[j][1] for blk in blocks) for j in range(n)]


def combine_secret(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from `threshold` shares {index (1-based): share}."""
    from Crypto.Protocol.SecretSharing import Shamir

    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares < threshold {threshold}")
    picked = sorted(shares.items())[:threshold]
    length = len(picked[0][1])
    return b"".join(Shamir.combine([(i, s[k:k + 16]) for i, s in picked])
                    for k in range(0, length, 16))


def threshold_for(n: int, fraction: float) -> int:
    """Shares needed to reconstruct: more than half of the participants, at least fraction*n."""
    import math

    return min(n, max(n // 2 + 1, math.ceil(fraction * n)))


def to_u8(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()
