"""deploy/ cannot run here (no Docker, no systemd, no devices), so check it statically: every
file it copies exists, every port agrees, and every `unikd ...` command in it parses with the
real CLI and names files that the kit itself creates or mounts."""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from server.deploy.cloud_config import DEFAULT_PORT
from shared.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DEPLOY_COMMANDS = {"cloud", "certs", "app", "submit", "edge", "edge-keygen"}


def parse(argv: list[str]):
    """The namespace `unikd argv` would run with; fails the test on a usage error."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 0, f"`unikd {shlex.join(argv)}` does not parse: {err.getvalue()}"
            return None  # --help
    assert getattr(ns, "func", None) is not None, f"`unikd {shlex.join(argv)}` runs nothing"
    return ns


def opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def under(path: str, roots: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or PurePosixPath(r) in p.parents for r in roots)


def pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        name, _, version = d.partition("==")
        out[re.sub(r"\[.*\]", "", name).lower()] = version
    return out


# ---------------------------------------------------------------- the CLI itself


def test_cli_lists_the_deployment_commands():
    proc = subprocess.run([sys.executable, "-m", "shared.cli.main", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^\s{4}([a-z][a-z-]+)\s", proc.stdout, re.M))
    assert DEPLOY_COMMANDS <= listed, listed


# ---------------------------------------------------------------- Dockerfiles


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.mark.parametrize("name", ["Dockerfile.cloud", "Dockerfile.edge"])
def test_dockerfile_copies_existing_files_and_runs_real_commands(name):
    steps = dockerfile(name)
    copies = [a.split() for i, a in steps if i == "COPY"]
    assert copies
    for parts in copies:
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
    (entry,) = [exec_form(a) for i, a in steps if i == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for i, a in steps if i == "CMD"]
    assert entry == ["unikd"]
    parse(cmd)
    for i, a in steps:
        if i == "HEALTHCHECK":
            hc = exec_form(a.split("CMD", 1)[1].strip())
            assert hc[0] == "unikd"
            assert parse(hc[1:]).health_check
    run = " ".join(a for i, a in steps if i == "RUN")
    assert f"torch=={pins()['torch']}" in run
    assert any(i == "USER" and a != "root" for i, a in steps), "containers run as a user"


def test_cloud_image_serves_the_port_its_command_listens_on():
    steps = dockerfile("Dockerfile.cloud")
    (cmd,) = [exec_form(a) for i, a in steps if i == "CMD"]
    ns = parse(cmd)
    assert ns.func.__name__ == "cloud_cmd" and ns.host == "0.0.0.0"
    exposed = [int(a) for i, a in steps if i == "EXPOSE"]
    assert exposed == [ns.port] == [DEFAULT_PORT]
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env
    assert not ns.insecure


def test_edge_image_is_slim_and_pins_what_the_project_pins():
    steps = dockerfile("Dockerfile.edge")
    copied = {a.split()[0].rstrip("/") for i, a in steps if i == "COPY"}
    assert {"shared", "client"} <= copied
    assert not copied & {"server", "configs", "bench", "tests"}, "edge image has no cloud code"
    run = " ".join(a for i, a in steps if i == "RUN")
    assert "--no-deps ." in run  # pyproject's cloud-only deps (Ray, matplotlib) stay out
    assert "simulation" not in run and "ray" not in run.split() and "matplotlib" not in run
    project = pins()
    for pkg, version in re.findall(r"([a-z][a-z0-9_-]*)==([0-9][\w.]*)", run):
        assert project.get(pkg.lower()) == version, f"edge pins {pkg}=={version}, " \
                                                     f"pyproject says {project.get(pkg.lower())}"
    assert {"torch", "flwr", "cryptography"} <= set(re.findall(r"([a-z][a-z0-9_-]*)==", run))


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def mounts(service: dict) -> dict[str, tuple[str, str | None, bool]]:
    """target -> (volume, subpath, read_only)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out[parts[1]] = (parts[0], None, len(parts) > 2 and parts[2] == "ro")
        else:
            out[v["target"]] = (v["source"], (v.get("volume") or {}).get("subpath"),
                                bool(v.get("read_only")))
    return out


def test_compose_builds_from_the_dockerfiles_and_every_command_parses(compose):
    services = compose["services"]
    built = {}
    for name, svc in services.items():
        if "build" in svc:
            ctx = (DEPLOY / svc["build"]["context"]).resolve()
            assert ctx == REPO, f"{name}: build context is not the repository root"
            assert (ctx / svc["build"]["dockerfile"]).is_file()
            built[svc["image"]] = svc["build"]["dockerfile"]
        parse(svc["command"])
        hc = svc.get("healthcheck", {}).get("test")
        if hc:
            assert hc[0] == "CMD" and hc[1] == "unikd"
            parse(hc[2:])
        for vol, _, _ in mounts(svc).values():
            assert vol in compose["volumes"], f"{name}: volume {vol} is not declared"
    for name, svc in services.items():
        assert svc["image"] in built, f"{name}: image {svc['image']} is built by no service"
    assert built["fedunikd-edge:0.1.0"] == "deploy/Dockerfile.edge"


def _target(svc: dict, volume: str) -> str:
    (target,) = [t for t, (v, _, _) in mounts(svc).items() if v == volume]
    return target


def _in(svc: dict, path: str) -> tuple[str, bool]:
    """(volume, read_only) that holds `path` inside this service."""
    (hit,) = [(v, ro) for t, (v, _, ro) in mounts(svc).items() if under(path, [t])]
    return hit


def test_compose_publishes_only_the_proxy_and_keeps_private_keys_apart(compose):
    s = compose["services"]
    cloud = s["cloud"]["command"]
    port = int(opt(cloud, "--port"))
    assert [int(p.split(":")[-1]) for p in s["cloud"]["ports"]] == [port] == [DEFAULT_PORT]
    assert "--insecure" not in cloud and "--dev-certs" not in cloud
    assert all("ports" not in svc for n, svc in s.items() if n != "cloud")
    state = _target(s["cloud"], "cloud-state")
    assert opt(cloud, "--state-dir") == state

    # The CA and the app key live in `pki`, mounted by the operator's setup services only.
    pki_users = {n for n, svc in s.items() if "pki" in {v for v, _, _ in mounts(svc).values()}}
    assert pki_users == {"certs", "app-key", "sign"}
    assert all(svc.get("profiles") == ["setup"] for n, svc in s.items() if n in pki_users)
    certs = s["certs"]["command"]
    assert _in(s["certs"], opt(certs, "--dir"))[0] == "pki"
    assert opt(certs, "--cloud-dir") == f"{state}/certs"  # ca.crt, server.pem, server.key only
    trust = opt(certs, "--edge-dir")
    assert _in(s["certs"], trust)[0] == "trust"
    app_pub = opt(s["app-key"]["command"], "--pub-out")
    assert _in(s["app-key"], app_pub)[0] == "trust"
    sign = s["sign"]["command"]
    assert _in(s["sign"], opt(sign, "--key")) == ("pki", True)
    assert _in(s["sign"], opt(sign, "--out"))[0] == "cloud-state"

    # Each edge's node key is made in that edge's own volume; only its .pub is shared.
    keygens = {n: svc for n, svc in s.items() if svc["command"][0] == "edge-keygen"}
    edges = {n: svc for n, svc in s.items() if svc["command"][0] == "edge"}
    assert sorted(keygens) == sorted(f"{e}-key" for e in edges)
    pubs = []
    for name, svc in keygens.items():
        cmd = svc["command"]
        key_vol = _in(svc, cmd[1])[0]
        assert key_vol == f"{name[:-4]}-keys"
        users = {n for n, x in s.items() if key_vol in {v for v, _, _ in mounts(x).values()}}
        assert users == {name, name[:-4]}, f"{key_vol} is mounted by {users}"
        assert _in(svc, opt(cmd, "--pub-out"))[0] == "trust"
        pubs.append(opt(cmd, "--pub-out"))

    reg = s["register"]
    assert reg["network_mode"] == "service:cloud"  # the Control API is on the cloud's loopback
    assert opt(reg["command"], "--state-dir") == _target(reg, "cloud-state") == state
    assert sorted(a for a in reg["command"] if a.endswith(".pub")) == sorted(pubs)
    assert reg["depends_on"]["cloud"]["condition"] == "service_healthy"

    ids = []
    for name, svc in edges.items():
        ns = parse(svc["command"])
        ids.append(ns.client_id)
        h, p = ns.superlink.split(":")
        assert h == "cloud" and h in opts(certs, "--name") and int(p) == port
        assert _in(svc, ns.ca) == ("trust", True) and Path(ns.ca).name == "ca.crt"
        assert _in(svc, ns.app_key) == ("trust", True)
        assert Path(ns.app_key).name == Path(app_pub).name
        assert _in(svc, ns.key) == (f"{name}-keys", True)
        assert ns.data in mounts(svc) and mounts(svc)[ns.data][2]
        assert not ns.insecure and not ns.allow_unsigned_apps
        assert svc["depends_on"]["register"]["condition"] == "service_completed_successfully"
        synth = parse(s["edge-data"]["command"])
        assert 0 < int(ns.domain) < synth.domains  # a target domain the synth data holds
    assert len(set(ids)) == len(ids), "client ids must be unique"


def test_the_cloud_and_the_edges_get_no_private_key_of_the_ca(tmp_path):
    from server.deploy.certs import cloud_files, init_all

    init_all(tmp_path / "pki", ["cloud"])
    cloud = cloud_files(tmp_path / "pki", tmp_path / "cloud")
    edge = cloud_files(tmp_path / "pki", tmp_path / "edge", edge=True)
    assert sorted(p.name for p in cloud.iterdir()) == ["ca.crt", "server.key", "server.pem"]
    assert sorted(p.name for p in edge.iterdir()) == ["ca.crt"]
    assert (cloud / "server.key").stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string((DEPLOY / "systemd" / "unikd-edge.service").read_text())
    return cp


def env_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "systemd" / "edge.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_systemd_unit_runs_the_edge_command_with_the_documented_settings():
    svc = unit()["Service"]
    env = env_example()
    used = set(re.findall(r"\$\{(\w+)\}", svc["ExecStart"]))
    assert used and used <= set(env), f"{used - set(env)} not in edge.env.example"
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], svc["ExecStart"]))
    assert argv[0] == "/opt/unikd/venv/bin/unikd"
    ns = parse(argv[1:])
    assert ns.func.__name__ == "edge_cmd" and not ns.insecure
    writable = svc["ReadWritePaths"].split() + ["/var/lib/" + svc["StateDirectory"]]
    readable = writable + svc["ReadOnlyPaths"].split()
    assert under(ns.data, readable) and under(ns.ca, readable) and under(ns.key, readable)
    assert under(ns.home, writable)
    assert svc["KillMode"] == "control-group" and svc["Restart"] == "always"
    assert svc["EnvironmentFile"] == "/etc/unikd/edge.env"
    assert svc["User"] == "unikd"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


# ---------------------------------------------------------------- the guide


def guide_commands() -> list[list[str]]:
    text = (DEPLOY / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line)
            if "useradd" in argv:  # `... unikd` names the system user there
                continue
            for i, a in enumerate(argv):
                if (a == "unikd" or a.endswith("/bin/unikd")) and argv[i - 1:i] != ["-u"]:
                    out.append(argv[i + 1:])
                    break
    return out


def test_every_unikd_command_in_the_guide_parses():
    cmds = guide_commands()
    assert {c[0] for c in cmds} >= {"cloud", "certs", "submit", "edge", "edge-keygen", "data"}
    for argv in cmds:
        parse(argv)


def test_guide_and_unit_agree_on_paths():
    text = (DEPLOY / "README.md").read_text()
    for rel in ("deploy/systemd/unikd-edge.service", "deploy/systemd/edge.env.example",
                "deploy/compose.yaml"):
        assert rel in text and (REPO / rel).is_file(), rel
    svc = unit()["Service"]
    assert svc["EnvironmentFile"] in text  # the guide copies edge.env where the unit reads it
    assert "/opt/unikd/venv" in text and svc["ExecStart"].startswith("/opt/unikd/venv/bin/unikd")
    assert "useradd --system" in text and f"/var/lib/{svc['StateDirectory']}" in text
