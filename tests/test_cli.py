"""The `unikd` root command: help, `info --json`, and a clear exit 2 for an unknown dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_help_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "shared.cli.main", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: unikd" in proc.stdout
    for command in ("info", "data"):
        assert command in proc.stdout


def test_help_in_process_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "usage: unikd" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: unikd" in capsys.readouterr().out


def test_info_json_reports_sizes(capsys):
    rc = main(["info", "--dataset", "HAR", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert info["teacher"]["params"] == 200_902
    assert info["student"]["params"] == 13_366
    assert round(info["teacher"]["macs"] / 1e6, 2) == 9.28
    assert round(info["student"]["macs"] / 1e6, 3) == 0.649


def test_info_plain_text(capsys):
    assert main(["info", "--dataset", "har"]) == 0
    out = capsys.readouterr().out
    assert "200,902" in out and "13,366" in out


def test_unknown_dataset_exits_2_with_clear_message(capsys):
    rc = main(["info", "--dataset", "NOPE"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown dataset 'NOPE'" in err
    assert "HAR" in err  # the message lists the known names


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
