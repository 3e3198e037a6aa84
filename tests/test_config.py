"""Strict config loading: defaults, YAML errors that name key and file, `--set`, presets, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import RunConfig, load_config
from shared.errors import ConfigError


def _yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_load():
    cfg = load_config()
    assert cfg == RunConfig().resolved()
    assert not cfg.distill.target_kd and cfg.distill.cross_kd == "expected"  # issue 25
    assert not cfg.distill.reference_compat and cfg.teacher.ensemble == 3


def test_yaml_file_values_are_applied(tmp_path):
    cfg = load_config(_yaml(tmp_path, "seed: 7\ndistill:\n  lr: 1e-3\n  epochs: 3\nfed:\n  clients: 5\n"))
    assert (cfg.seed, cfg.distill.lr, cfg.distill.epochs, cfg.fed.clients) == (7, 1e-3, 3, 5)


@pytest.mark.parametrize("text, key, problem", [
    ("distill:\n  nope: 1\n", "distill.nope", "unknown key"),
    ("bogus: 1\n", "bogus", "unknown key"),
    ("distill:\n  epochs: ten\n", "distill.epochs", "integer"),
    ("data:\n  normalize: 3\n", "data.normalize", "true or false"),
    ("distill: 4\n", "distill", "mapping"),
    ("distill:\n  temperature: 0\n", "distill.temperature", "out of range"),
    ("teacher:\n  ensemble: 17\n", "teacher.ensemble", "out of range"),
    ("fed:\n  bn_policy: sometimes\n", "fed.bn_policy", "must be one of"),
], ids=["unknown-nested", "unknown-top", "wrong-type-int", "wrong-type-bool", "not-a-section",
        "below-range", "above-range", "not-a-choice"])
def test_bad_yaml_names_dotted_key_and_file(tmp_path, text, key, problem):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"'{key}'" in msg
    assert str(path) in msg
    assert problem in msg


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in str(info.value)


def test_set_overrides_apply_with_type_coercion(tmp_path):
    path = _yaml(tmp_path, "distill:\n  epochs: 3\n")
    cfg = load_config(path, ["distill.lr=1e-3", "distill.epochs=5", "data.normalize=false",
                             "fed.bn_policy=local", "distill.temperature=2", "data.dataset=HAR"])
    assert cfg.distill.lr == 1e-3 and isinstance(cfg.distill.lr, float)
    assert cfg.distill.epochs == 5  # the override wins over the file
    assert cfg.data.normalize is False
    assert cfg.fed.bn_policy == "local"
    assert cfg.distill.temperature == 2.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.data.dataset == "HAR"


@pytest.mark.parametrize("override, key", [
    ("distill.lr", "distill.lr"),  # no '='
    ("distill.nope=1", "distill.nope"),
    ("distill.epochs=many", "distill.epochs"),
    ("distill.temperature=-1", "distill.temperature"),
])
def test_bad_override_names_set_and_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert "--set" in str(info.value)
    assert key in str(info.value)


def test_set_keeps_string_fields_verbatim():
    # YAML 1.1 would read 2:11 as the base-60 integer 131 and 0123 as the octal 83
    cfg = load_config(None, ["data.scenario=2:11", "data.path=0123"])
    assert cfg.data.scenario == "2:11"
    assert Path(cfg.data.path).name == "0123"  # a folder named 0123, made absolute


@pytest.mark.parametrize("text, meant", [("data:\n  scenario: 2:11\n", "2:11"),
                                         ("data:\n  path: 0123\n", "0123")])
def test_yaml_unquoted_string_is_refused_with_a_hint(tmp_path, text, meant):
    with pytest.raises(ConfigError, match="quote it"):
        load_config(_yaml(tmp_path, text))


def test_reference_compat_turns_every_fix_off():
    cfg = load_config(None, ["distill.reference_compat=true"])
    d = cfg.distill
    assert not (d.target_kd or d.adv_to_student or d.beta_natural_log or d.detach_weights or d.grl_ramp)
    assert d.double_target_forward


def test_reference_compat_refuses_a_switch_it_would_override(tmp_path):
    with pytest.raises(ConfigError, match=r"distill.adv_to_student.*--set.*reference_compat"):
        load_config(None, ["distill.reference_compat=true", "distill.adv_to_student=true"])
    file = _yaml(tmp_path, "distill:\n  reference_compat: true\n  grl_ramp: true\n")
    with pytest.raises(ConfigError, match="grl_ramp") as err:
        load_config(file)
    assert str(file) in str(err.value)
    # the same value the preset sets is no contradiction (a dumped resolved config has both)
    ok = _yaml(tmp_path, "distill:\n  reference_compat: true\n  grl_ramp: false\n")
    assert load_config(ok).distill.double_target_forward


def test_input_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "configs"
    sub.mkdir()
    file = sub / "run.yaml"
    file.write_text("data:\n  path: ../data/HAR\nteacher:\n  checkpoint: t.pt\n")
    monkeypatch.chdir(tmp_path.parent)  # somewhere else entirely
    cfg = load_config(file)
    assert cfg.data.path == str((tmp_path / "data" / "HAR").resolve())
    assert cfg.teacher.checkpoint == str((sub / "t.pt").resolve())
    # --set values are relative to where the command runs
    cfg = load_config(file, ["data.path=elsewhere"])
    assert cfg.data.path == str((tmp_path.parent / "elsewhere").resolve())
    # "" keeps meaning "the embedded synthetic data"
    assert load_config(None, ["data.path="]).data.path == ""


def test_distill_method_is_read_and_validated(tmp_path):
    assert load_config(_yaml(tmp_path, "distill:\n  method: aad\n")).distill.method == "aad"
    with pytest.raises(ConfigError, match="distill.method"):
        load_config(None, ["distill.method=nope"])


def test_config_show_lists_every_key_with_its_default_and_value(tmp_path, capsys):
    from shared.cli.main import main
    from shared.cli.commands.config import rows
    from shared.config import RunConfig

    file = _yaml(tmp_path, "seed: 5\nfed:\n  clients: 7\n")
    assert main(["config", "show", "--config", str(file), "--json"]) == 0
    shown = {r["key"]: r for r in __import__("json").loads(capsys.readouterr().out)}
    assert len(shown) == len(rows(RunConfig, RunConfig()))
    assert shown["seed"]["value"] == 5 and shown["seed"]["default"] == 0
    assert shown["fed.clients"]["value"] == 7 and shown["fed.clients"]["type"] == "int"
    assert shown["fed.dp"]["type"] == "off|central|local|record"
    assert shown["distill.lr"]["range"] == [0.0, 1.0]
    leaves = {f"{s}.{f}" for s in ("data", "teacher", "distill", "fed")
              for f in RunConfig.__dataclass_fields__[s].default_factory.__dataclass_fields__}
    assert leaves <= set(shown)


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(None, ["seed=11", "distill.lr=3e-4", "distill.weight_decay=1e-6",
                             "fed.partition=dirichlet:0.5", "data.scenario=2->11",
                             "distill.reference_compat=true"])
    cfg.dump(tmp_path / "dumped.yaml")
    again = load_config(tmp_path / "dumped.yaml")
    assert again == cfg
    assert again.hash() == cfg.hash()


def test_hash_changes_with_any_value():
    assert load_config().hash() != load_config(None, ["seed=1"]).hash()


def test_ema_decay_is_on_by_default_and_refused_outside_zero_to_one(tmp_path):
    """`distill.ema_decay` in [0, 1): 0.955 by default (issue 25), 0 is off; 1 would freeze the
    first step's weights and a negative decay is no average: both are refused naming the key."""
    assert load_config().distill.ema_decay == 0.955
    assert load_config(None, ["distill.ema_decay=0"]).distill.ema_decay == 0.0
    assert load_config(None, ["distill.ema_decay=0.99"]).distill.ema_decay == 0.99
    for bad in ("1", "1.5", "-0.1", "often"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"distill.ema_decay={bad}"])
        assert "distill.ema_decay" in str(info.value) and "--set" in str(info.value)
    path = _yaml(tmp_path, "distill:\n  ema_decay: 1.0\n")
    with pytest.raises(ConfigError, match="out of range") as info:
        load_config(path)
    assert "'distill.ema_decay'" in str(info.value) and str(path) in str(info.value)


def test_the_label_free_levers_compose_with_reference_compat():
    """`reference_compat: true` refuses a switch it would force; the EMA and the label-free
    target terms (issue 25) are none of those (they only add target-side terms or average the
    reported student), so they stand beside it with the values given."""
    cfg = load_config(None, ["distill.reference_compat=true", "distill.cross_kd=expected",
                             "distill.ema_decay=0.9", "distill.im_weight=0.5",
                             "distill.pl_weight=2.0", "distill.pl_threshold=0.8"])
    d = cfg.distill
    assert (d.ema_decay, d.im_weight, d.pl_weight, d.pl_threshold) == (0.9, 0.5, 2.0, 0.8)
    assert d.double_target_forward and not d.target_kd  # the reference's switches still set
