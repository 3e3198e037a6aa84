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

from server.deploy.superlink import DEFAULT_PORT
from shared.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DEPLOY_COMMANDS = {"cloud", "certs", "submit", "edge", "edge-keygen"}


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
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "--help"], cwd=REPO,
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


def test_compose_wires_cloud_certs_registration_and_edges_consistently(compose):
    s = compose["services"]
    cloud = s["cloud"]["command"]
    port = int(opt(cloud, "--port"))
    published = [p.split(":") for p in s["cloud"]["ports"]]
    assert [int(c) for _, c in published] == [port] == [DEFAULT_PORT]
    assert "--insecure" not in cloud

    certs = s["certs"]["command"]
    cert_dir = opt(certs, "--dir")
    names, nodes, bundles = opts(certs, "--name"), opts(certs, "--node"), opt(certs, "--bundle-dir")
    state_target = [t for t, (v, _, _) in mounts(s["cloud"]).items() if v == "cloud-state"][0]
    assert opt(cloud, "--state-dir") == state_target
    assert cert_dir == f"{state_target}/certs"  # where `unikd cloud` looks for its certs
    assert under(bundles, list(mounts(s["certs"])))

    reg = s["register"]["command"]
    host, reg_port = opt(reg, "--superlink").split(":")
    assert host == "cloud" and host in names and int(reg_port) == port
    assert opt(reg, "--ca") == f"{cert_dir}/ca.crt"
    pubs = [a for a in reg[2:] if a.endswith(".pub")]
    assert sorted(pubs) == sorted(f"{cert_dir}/nodes/{n}.pub" for n in nodes)
    assert s["register"]["depends_on"]["cloud"]["condition"] == "service_healthy"

    edges = {n: svc for n, svc in s.items() if svc["command"][0] == "edge"}
    assert sorted(edges) == sorted(nodes), "one edge service per node key"
    ids = []
    for name, svc in edges.items():
        cmd = svc["command"]
        ns = parse(cmd)
        ids.append(ns.client_id)
        h, p = ns.superlink.split(":")
        assert h == "cloud" and h in names and int(p) == port
        m = mounts(svc)
        ((target, (vol, sub, ro)),) = [(t, v) for t, v in m.items() if v[1] is not None]
        assert sub == name and ro, f"{name} mounts only its own bundle, read-only"
        assert mounts(s["certs"])[bundles][0] == vol
        assert ns.ca == f"{target}/ca.crt" and ns.key == f"{target}/node.key"
        assert ns.data in m and m[ns.data][2]
        assert not ns.insecure
        assert svc["depends_on"]["register"]["condition"] == "service_completed_successfully"
        data_svc = [x for x in s.values()
                    if x["command"][:2] == ["data", "synth"] and m[ns.data][0] in
                    {v for v, _, _ in mounts(x).values()}]
        assert data_svc, f"{name}: nothing writes its data volume"
        synth = parse(data_svc[0]["command"])
        assert 0 < int(ns.domain) < synth.domains  # a target domain the synth data holds
    assert len(set(ids)) == len(ids), "client ids must be unique"


def test_bundle_files_are_the_ones_the_edges_mount(tmp_path):
    from server.deploy.certs import init_all, make_bundle

    init_all(tmp_path / "certs", ["cloud"], ["edge-1"])
    out = make_bundle(tmp_path / "certs", "edge-1", tmp_path / "bundle")
    assert {p.name for p in out.iterdir()} >= {"ca.crt", "node.key"}
    assert (out / "node.key").stat().st_mode & 0o777 == 0o600


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
