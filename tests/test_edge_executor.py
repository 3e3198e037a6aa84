"""The edge executor and node launcher: the flwr internals they use are pinned and checked,
the SuperNode's polls are shortened only inside the process we start, and bad setups stop
with a clear message. The executor running real tasks is in test_secure_deploy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.node.executor import main as executor_main
from client.node.launcher import executor_command, parse_args
from client.node import supernode_internals
from shared.platform import flower_pins
from shared.errors import UnikdError

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_flower_is_the_one_our_internals_were_written_for():
    flower_pins.check()  # flwr 1.42.0 with every attribute and parameter we use


def test_another_flower_version_or_a_missing_internal_fails_loudly(monkeypatch):
    import flwr
    import flwr.supernode.runtime.run_clientapp as rc

    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    with pytest.raises(flower_pins.FlowerChanged, match="flwr 1.43.0 is installed"):
        flower_pins.check()
    monkeypatch.setattr(flwr, "__version__", flower_pins.FLWR_VERSION)
    monkeypatch.delattr(rc, "pull_task_input")
    with pytest.raises(flower_pins.FlowerChanged,
                       match="run_clientapp.pull_task_input.*Upgrading flwr"):
        flower_pins.check()


def fresh_python(code: str) -> list[str]:
    """Run `code` in a fresh interpreter at the repo root; its stdout, split on whitespace."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_supernode_patch_shortens_polls_in_that_process_only():
    code = ("import time\n"
            "from shared.platform import flower_pins\n"
            "from client.node import supernode_internals as sn\n"
            "import flwr.supernode.start_client_internal as sci\n"
            "from flwr.supercore.inflatable import inflatable_utils as iu\n"
            "from client.node.polling import IdleBackoff\n"
            "flower_pins.check(); sn.patch_supernode(IdleBackoff(0.1, 2.0))\n"
            "flower_pins.check()\n"
            "t = time.monotonic(); sci.time.sleep(3); d = time.monotonic() - t\n"
            "print(round(d, 2) < 1.0, sci.time.monotonic() > 0,\n"
            "      iu.pull_objects.__kwdefaults__['initial_backoff'],\n"
            "      iu.pull_and_inflate_object_from_tree.__kwdefaults__['backoff_cap'],\n"
            "      time.sleep is not sci.time.sleep)\n")
    assert fresh_python(code) == ["True", "True", "0.05", "0.5", "True"]
    from flwr.supercore.inflatable import inflatable_utils as iu

    assert iu.pull_objects.__kwdefaults__["initial_backoff"] == 1  # untouched here


def test_a_bundle_is_installed_once_and_reused_only_by_its_full_hash(tmp_path):
    import hashlib

    calls = []

    def flower_install(fab_file, install_dir=None, skip_prompt=False):  # Flower's contract:
        calls.append(fab_file)  # make the folder named by the hash prefix, keep an existing one
        target.mkdir(exist_ok=True)
        return target

    bundle = b"bundle bytes"
    digest = hashlib.sha256(bundle).hexdigest()
    target = tmp_path / f"app.{digest[:8]}"
    install = supernode_internals.install_once(flower_install,
                                               lambda d: tmp_path / f"app.{d[:8]}")
    assert install(bundle, skip_prompt=True) == target and len(calls) == 1
    assert (target / supernode_internals.BUNDLE_MARK).read_text() == digest
    assert install(bundle, skip_prompt=True) == target and len(calls) == 1  # skipped
    (target / supernode_internals.BUNDLE_MARK).write_text("0" * 64)  # not this bundle's hash
    assert install(bundle, skip_prompt=True) == target and len(calls) == 2
    other = tmp_path / "other"
    other.mkdir()  # a folder that predates us (no mark): Flower decides, we never mark it
    target = other
    install = supernode_internals.install_once(flower_install, lambda d: other)
    install(bundle, skip_prompt=True)
    install(bundle, skip_prompt=True)
    assert len(calls) == 4 and not (other / supernode_internals.BUNDLE_MARK).exists()
    told = []  # where the bundle is, for the warm process: after an install and after a skip
    target = tmp_path / f"new.{digest[:8]}"
    install = supernode_internals.install_once(flower_install, lambda d: target,
                                               lambda d, p: told.append((d, p)))
    install(bundle, skip_prompt=True)
    install(bundle, skip_prompt=True)
    assert told == [(digest, target), (digest, target)] and len(calls) == 5


def test_the_warm_executor_preloads_what_an_optimizer_step_imports():
    code = ("import sys\n"
            "from client.node.executor import warm_up\n"
            "warm_up()\n"
            "print('torch._dynamo' in sys.modules, 'flwr.supernode.runtime.run_clientapp' in "
            "sys.modules, any(m.split('.')[0] == 'server' for m in sys.modules))\n")
    assert fresh_python(code) == ["True", "True", "False"]


def test_launcher_needs_the_supernode_arguments_and_passes_the_key_on():
    with pytest.raises(UnikdError, match="usage"):
        parse_args(["--runtime-api-address", "127.0.0.1:9"])
    args, rest = parse_args(["--runtime-api-address", "127.0.0.1:9", "--app-key", "op.pub",
                             "--", "--superlink", "x:1"])
    assert rest == ["--superlink", "x:1"]
    cmd = executor_command(args)
    assert cmd[cmd.index("--app-key") + 1] == "op.pub" and "--allow-unsigned-apps" not in cmd
    assert cmd[cmd.index("--poll") + 1] == "0.05"


def test_executor_refuses_to_start_without_a_valid_operator_key(tmp_path, capsys):
    assert executor_main(["--runtime-api-address", "127.0.0.1:9"]) == 2
    assert "--app-key OPERATOR.pub is required" in capsys.readouterr().err
    (tmp_path / "bad.pub").write_text("not a key")
    assert executor_main(["--runtime-api-address", "127.0.0.1:9", "--app-key",
                          str(tmp_path / "bad.pub")]) == 2
    assert "not a PEM public key" in capsys.readouterr().err


def test_edge_with_a_broken_operator_key_stops_before_starting(tmp_path, make_domain_file):
    make_domain_file(domain="1", folder=tmp_path / "d")
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "op.pub").write_text("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "shared.cli.main", "edge", "--superlink", "c:1",
                          "--data", str(tmp_path / "d"), "--ca", str(tmp_path / "ca.crt"),
                          "--app-key", str(tmp_path / "op.pub"), "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--app-key" in out.stderr, out.stderr
    assert time.monotonic() - start < 60


def test_polls_stay_fast_while_work_comes_and_back_off_when_none_does():
    from client.node.polling import IdleBackoff

    now = [0.0]
    b = IdleBackoff(0.1, 2.0, quiet=10.0, factor=1.5, clock=lambda: now[0])
    waits, first_slower = [], None
    while now[0] < 30.0:  # no work at all: fast for 10 s, then growing to the idle poll
        waits.append(b.next_wait())
        if waits[-1] > 0.1 and first_slower is None:
            first_slower = now[0]
        now[0] += waits[-1]
    assert 9.9 < first_slower < 10.2 and max(waits) == 2.0 and waits == sorted(waits)
    assert sum(0.1 < w < 2.0 for w in waits) == 7  # 0.15 ... 1.71: about 5 s of growing
    b.busy()  # a message came: fast again at once
    assert b.next_wait() == 0.1
    assert IdleBackoff(3.0, 2.0).next_wait() == 3.0  # the idle poll is never below the fast one


def test_supernode_sleeps_treat_a_pending_reply_as_work():
    calls = []

    class Spy:
        fast = 0.01

        def busy(self):
            calls.append("busy")

        def next_wait(self):
            calls.append("idle")
            return 0.0

    sleeps = supernode_internals.ShortSleeps(Spy())
    sleeps.sleep(3)  # Flower's idle poll: no message came
    sleeps.sleep(0.5)  # waiting for a pulled message's reply: a run is sending work
    assert calls == ["idle", "busy"]


def _tiny_app(folder: Path, package: str, body: str = "") -> Path:
    """An installed app folder as Flower leaves it: pyproject.toml naming a ClientApp."""
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "app.py").write_text(f"from flwr.clientapp import ClientApp\n{body}\n"
                                             "app = ClientApp()\n")
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{package}"\nversion = "1.0.0"\n'
        f'[tool.flwr.app]\npublisher = "test"\n'
        f'[tool.flwr.app.components]\nserverapp = "{package}.app:app"\n'
        f'clientapp = "{package}.app:app"\n')
    return folder


def _warm_tasks(tmp_path: Path, app_dir: Path, package: str, tasks: int):
    """Start a real warm process for app_dir, hand it `tasks` tasks, and collect what each
    forked task saw: whether the ClientApp module was already imported, and the warm flag."""
    from client.node.warm_bundle import WarmBundle

    seen, failed = tmp_path / "seen", tmp_path / "failed"
    seen.mkdir()

    def launch(token, task_id, run_id, warm):
        (seen / str(task_id)).write_text(f"{f'{package}.app' in sys.modules} {warm} {token}")
        os._exit(0)

    def on_failure(digest):
        failed.write_text(digest)

    w = WarmBundle.start("ab" * 32, app_dir, {package}, launch, on_failure)
    try:
        for i in range(tasks):
            assert w.send(f"tok{i}", i, 7)
        deadline = time.monotonic() + 60
        while len(list(seen.iterdir())) < tasks:
            assert time.monotonic() < deadline and w.ended() is None
            time.sleep(0.05)
        w.retire()  # no more tasks: it exits once they have ended
        while (code := w.ended()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        w.stop()
    assert not w.send("late", 99, 7)  # a retired process takes no task
    return ({int(f.name): f.read_text().split() for f in seen.iterdir()}, code,
            failed.read_text() if failed.exists() else None)


def test_a_warm_bundle_process_imports_the_clientapp_once_and_forks_each_task(tmp_path):
    app = _tiny_app(tmp_path / "app", "tinyapp_warm_ok")
    seen, code, failed = _warm_tasks(tmp_path, app, "tinyapp_warm_ok", tasks=3)
    assert seen == {i: ["True", "True", f"tok{i}"] for i in range(3)} and code == 0
    assert failed is None and "tinyapp_warm_ok.app" not in sys.modules  # only in the children


def test_a_bundle_that_cannot_be_preloaded_still_runs_its_tasks_cold(tmp_path):
    app = _tiny_app(tmp_path / "app", "tinyapp_warm_bad", body="raise RuntimeError('no')")
    seen, code, failed = _warm_tasks(tmp_path, app, "tinyapp_warm_bad", tasks=2)
    assert seen == {i: ["False", "False", f"tok{i}"] for i in range(2)}  # nothing half-imported
    assert failed == "ab" * 32 and code == 1  # the executor is told, and stops sending tasks


def test_a_warm_task_keeps_the_preloaded_modules_only_for_the_same_bundle(monkeypatch,
                                                                         tmp_path):
    import hashlib
    import io
    import zipfile

    from client.node.executor import check_bundle

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tinypkg_pre/__init__.py", "")
    content = buf.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    folder = tmp_path / "installed"
    monkeypatch.setattr(sys, "path", [str(folder.absolute()), *sys.path])
    monkeypatch.setitem(sys.modules, "tinypkg_pre", object())
    same = check_bundle(None, allow_unsigned=True, preloaded=(digest, folder))
    assert same(digest, digest, content, {}) is None
    assert "tinypkg_pre" in sys.modules and str(folder.absolute()) in sys.path  # kept
    other = check_bundle(None, allow_unsigned=True, preloaded=("0" * 64, folder))
    assert other(digest, digest, content, {}) is None  # another bundle was preloaded:
    assert "tinypkg_pre" not in sys.modules and str(folder.absolute()) not in sys.path


def test_the_executor_retires_a_warm_process_when_another_bundle_runs_or_it_fails():
    from client.node.executor import Executor

    class Warm:  # stands in for WarmBundle's handle: only what the executor calls here
        def __init__(self, digest):
            self.digest, self.retired = digest, False

        def retire(self):
            self.retired = True

    ex = Executor("127.0.0.1:9", public=None, allow_unsigned=True)
    ex.warm = first = Warm("a" * 64)
    ex.note_install({"pid": 1, "sha256": "a" * 64, "dir": "x", "modules": []})  # same bundle
    assert ex.warm is first and not first.retired
    ex.note_install({"pid": 2, "sha256": "b" * 64, "dir": "y", "modules": []})  # another one
    assert ex.warm is None and first.retired and ex.retired == [first]
    assert not ex.failed_warm  # a bundle that was swapped out may be kept warm again later
    ex.warm = second = Warm("c" * 64)
    ex.note_install({"warm_failed": "c" * 64})  # it could not import its bundle
    assert ex.warm is None and second.retired and ex.failed_warm == {"c" * 64}
    ex.children[3] = 7  # a task forked by the executor itself: acted on once it has ended
    report = {"pid": 3, "sha256": "d" * 64, "dir": "z", "modules": []}
    ex.note_install(report)
    assert ex.installs == {3: report}
