"""App signing: the operator's Ed25519 signature over the bundle hash, checked on the edge
before the bundle is installed. No processes here; the real refusal is in test_secure_deploy."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

from client.node.executor import bundle_modules, check_bundle
from client.node.warm_bundle import forget_modules
from client.node.supernode import EdgeConfig, validate
from server.deploy import control_internals
from server.deploy.flwr_cli import FlwrCli, read_signature_file
from shared.platform import app_signing
from shared.cli.main import main
from shared.errors import UnikdError

REPO = Path(__file__).resolve().parents[1]


def tiny_app(folder: Path, body: str = "app = None\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "tinyapp"\nversion = "1.0.0"\n'
        '[tool.flwr.app]\npublisher = "tests"\n'
        '[tool.flwr.app.components]\nserverapp = "tinypkg.srv:app"\n'
        'clientapp = "tinypkg.cli:app"\n[tool.flwr.app.config]\napp-signature = ""\n')
    (folder / "tinypkg").mkdir(exist_ok=True)
    (folder / "tinypkg" / "__init__.py").write_text("")
    (folder / "tinypkg" / "srv.py").write_text(body)
    (folder / "tinypkg" / "cli.py").write_text(body)
    return folder


@pytest.fixture
def keys(tmp_path):
    pub = app_signing.generate_key(tmp_path / "op.key")
    other = app_signing.generate_key(tmp_path / "other.key")
    return (app_signing.load_private_key(tmp_path / "op.key"), app_signing.load_public_key(pub),
            app_signing.load_private_key(tmp_path / "other.key"), pub, other)


def test_signature_binds_the_bundle_hash_and_the_key(keys, tmp_path):
    key, public, other_key, _, _ = keys
    h = hashlib.sha256(b"bundle").hexdigest()
    assert (tmp_path / "op.key").stat().st_mode & 0o777 == 0o600
    sig = app_signing.sign(key, h)
    assert app_signing.check(public, h, sig) is None
    assert "does not verify" in app_signing.check(public, hashlib.sha256(b"x").hexdigest(), sig)
    assert "does not verify" in app_signing.check(public, h, app_signing.sign(other_key, h))
    assert "no app signature" in app_signing.check(public, h, "")
    assert "base64" in app_signing.check(public, h, "not base64!")
    # Domain separation: a signature over the bare hash (another protocol's message) fails.
    bare = base64.b64encode(key.sign(h.encode())).decode()
    assert "does not verify" in app_signing.check(public, h, bare)
    with pytest.raises(UnikdError, match="64 lower-case hex"):
        app_signing.signed_message("ABC")


def test_key_files_are_checked(tmp_path, keys):
    _, _, _, pub, _ = keys
    with pytest.raises(UnikdError, match="not found"):
        app_signing.load_public_key(tmp_path / "missing.pub")
    with pytest.raises(UnikdError, match="not a PEM public key"):
        app_signing.load_public_key(tmp_path / "op.key")  # the private file by mistake
    (tmp_path / "op.key").chmod(0o644)
    with pytest.raises(UnikdError, match="chmod 600"):
        app_signing.load_private_key(tmp_path / "op.key")
    with pytest.raises(UnikdError, match="exists"):
        app_signing.generate_key(tmp_path / "op.key")


def test_bundle_hash_is_the_one_flwr_run_sends_and_is_deterministic(tmp_path):
    from flwr.cli.build import build_fab_from_disk

    app = tiny_app(tmp_path / "app")
    h = control_internals.fab_hash(app)
    assert h == hashlib.sha256(build_fab_from_disk(app)).hexdigest() == \
        control_internals.fab_hash(app)
    (app / "tinypkg" / "cli.py").write_text("app = 1\n")
    assert control_internals.fab_hash(app) != h


def test_app_sign_file_is_accepted_only_for_the_same_bundle(tmp_path, keys):
    app = tiny_app(tmp_path / "app")
    assert main(["app", "sign", "--key", str(tmp_path / "op.key"), "--app", str(app),
                 "--out", str(tmp_path / "app.sig")]) == 0
    data = json.loads((tmp_path / "app.sig").read_text())
    h = control_internals.fab_hash(app)
    assert data["fab_hash"] == h
    assert read_signature_file(tmp_path / "app.sig", h, app) == data["signature"]
    cli = FlwrCli("127.0.0.1:1", None, tmp_path / "home", signature=tmp_path / "app.sig")
    assert app_signing.check(keys[1], h, cli.app_signature(h, app)) is None
    (app / "tinypkg" / "srv.py").write_text("app = 2\n")  # the cloud's copy differs
    with pytest.raises(UnikdError, match="differs from the one the operator signed"):
        cli.app_signature(control_internals.fab_hash(app), app)
    with pytest.raises(UnikdError, match="not a `unikd app sign` file"):
        read_signature_file(tmp_path / "op.key.pub", h, app)


def _fab(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_edge_check_refuses_unsigned_foreign_and_swapped_bundles(keys, monkeypatch):
    key, public, other_key, _, _ = keys
    content = _fab({"pyproject.toml": "", "tinypkg_x/__init__.py": "", "solo.py": "",
                    ".info/CONTENT": ""})
    h = hashlib.sha256(content).hexdigest()
    check = check_bundle(public, allow_unsigned=False)
    sig = {app_signing.RUN_CONFIG_KEY: app_signing.sign(key, h)}
    assert "no app signature" in check(h, h, content, {})
    assert "does not verify" in check(h, h, content,
                                      {app_signing.RUN_CONFIG_KEY: app_signing.sign(other_key, h)})
    other = hashlib.sha256(b"x").hexdigest()
    assert "not the bundle that was submitted" in check(other, h, content, sig)
    assert "not the bundle that was submitted" in check(h, other, content, sig)
    # Accepted: and the modules the bundle provides are dropped from this (warm) process.
    monkeypatch.setitem(sys.modules, "tinypkg_x", object())
    monkeypatch.setitem(sys.modules, "tinypkg_x.sub", object())
    assert check(h, h, content, sig) is None
    assert "tinypkg_x" not in sys.modules and "tinypkg_x.sub" not in sys.modules
    assert check_bundle(None, allow_unsigned=True)(h, h, content, {}) is None


def test_bundle_modules_are_its_top_level_packages():
    content = _fab({"pyproject.toml": "", "client/node/client_app.py": "", "shared/x.py": "",
                    "top.py": "", ".info/CONTENT": "", "README.md": "", "data/x.json": ""})
    assert bundle_modules(content) == {"client", "shared", "top"}
    assert forget_modules({"no_such_package_here"}) == []


def test_our_own_bundle_provides_the_packages_the_warm_executor_has_loaded():
    """The executor imports client.* and shared.*: the bundle must provide them, so that the
    task drops ours and imports the signed bundle's copies."""
    mods = bundle_modules(control_internals.fab_bytes(REPO))
    assert {"client", "shared"} <= mods


def test_edge_requires_the_operator_key_unless_told_otherwise(tmp_path, make_domain_file, keys):
    make_domain_file(domain="3", folder=tmp_path / "d")
    (tmp_path / "ca.crt").write_text("x")
    base = dict(superlink="cloud:8000", data=tmp_path / "d", ca=tmp_path / "ca.crt")
    with pytest.raises(UnikdError, match="--app-key OPERATOR.pub is required"):
        validate(EdgeConfig(**base))
    with pytest.raises(UnikdError, match="--app-key: .*not a PEM public key"):
        validate(EdgeConfig(**base, app_key=tmp_path / "op.key"))
    assert validate(EdgeConfig(**base, app_key=keys[3])) == "3"
    assert validate(EdgeConfig(**base, allow_unsigned=True)) == "3"
