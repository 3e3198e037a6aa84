"""Per-dataset recipes (shared/config/recipes/): the recommended settings are what a command runs when
no config file is given. Layers: dataclass defaults < recipe < config file < --set, and a config
file replaces the recipe altogether."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest
import yaml

import shared.config.loader as config_loader
from shared.config import RunConfig, find_recipe, load_config, resolve_config
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HAR_RECIPE = ROOT / "shared" / "config" / "recipes" / "har.yaml"


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _value(cfg: RunConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _assert_recipe(cfg: RunConfig, skip: tuple[str, ...] = ()) -> None:
    recipe = _leaves(yaml.safe_load(HAR_RECIPE.read_text()))
    assert recipe, "the HAR recipe sets nothing"
    for key, want in recipe.items():
        if key not in skip:
            assert _value(cfg, key) == want, key


def _bench_cfg(tmp_path: Path, kind: str, *extra: str) -> RunConfig:
    """The config one `unikd bench KIND` worker runs, resolved exactly as the bench does."""
    from server.bench.central import scenario_cfg
    from server.commands import bench_plan
    from shared.cli.main import build_parser

    args = build_parser().parse_args(["bench", kind, "--dataset", "HAR", "--data", str(tmp_path),
                                      "--scenarios", "2->11", "--out", str(tmp_path / "o"),
                                      *extra])
    plan = bench_plan(args, [f"fed.partition={args.partition}"] if kind == "federated" else [])
    if "--config" not in extra:
        assert plan.base["recipe"]["file"] == str(HAR_RECIPE)
    return scenario_cfg(plan.base, plan.scenarios[0], plan.seeds[0], tmp_path / "o")


@pytest.mark.parametrize("kind", ["central", "federated"])
def test_bench_with_dataset_and_no_config_runs_the_recipe(tmp_path, kind):
    cfg = _bench_cfg(tmp_path, kind)
    _assert_recipe(cfg)
    assert cfg.data.path == str(tmp_path.resolve()) and cfg.data.scenario == "2->11"


def test_bench_set_overrides_and_config_file_replaces_the_recipe(tmp_path):
    cfg = _bench_cfg(tmp_path, "federated", "--set", "teacher.ensemble=1")
    assert cfg.teacher.ensemble == 1  # a value the user set, even the dataclass default, wins
    _assert_recipe(cfg, skip=("teacher.ensemble",))
    file = tmp_path / "mine.yaml"
    file.write_text("distill:\n  epochs: 3\n")
    cfg = _bench_cfg(tmp_path, "central", "--config", str(file))
    assert cfg.data.dataset == "HAR" and cfg.distill.epochs == 3
    assert cfg.teacher.ensemble == RunConfig().teacher.ensemble  # the file is the whole base
    assert cfg.distill.batch_size == RunConfig().distill.batch_size


@pytest.mark.parametrize("command", ["federate", "distill", "teacher"])
def test_commands_with_set_dataset_run_the_recipe(tmp_path, command, caplog):
    from shared.cli.main import build_parser

    args = build_parser().parse_args([command, "--set", "data.dataset=HAR",
                                      "--set", f"data.path={tmp_path}"])
    with caplog.at_level(logging.INFO, logger="shared.config"):
        cfg = load_config(args.config, args.set)  # what the command's _config() calls
    _assert_recipe(cfg)
    assert cfg.data.path == str(tmp_path.resolve())
    assert any("recipe HAR" in r.message and str(HAR_RECIPE) in r.message for r in caplog.records)


def test_set_wins_over_the_recipe_and_sources_are_recorded():
    res = resolve_config(None, ["data.dataset=HAR", "distill.epochs=7", "teacher.ensemble=1"])
    assert (res.config.distill.epochs, res.config.teacher.ensemble) == (7, 1)
    assert res.recipe is not None and res.recipe.file == str(HAR_RECIPE)
    assert res.sources["distill.epochs"] == "--set"
    assert res.sources["distill.batch_size"] == str(HAR_RECIPE)
    assert "seed" not in res.sources  # a dataclass default


def test_a_config_file_disables_the_recipe(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("data:\n  dataset: HAR\n")
    res = resolve_config(file, ["distill.epochs=4"])
    assert res.recipe is None
    want = RunConfig()
    want.data.dataset, want.distill.epochs = "HAR", 4
    assert res.config == want.resolved()


def test_datasets_without_a_recipe_use_the_defaults():
    for name in ("SYNTH", "GENERIC", "HHAR"):
        assert find_recipe(name) is None
        cfg = load_config(None, [f"data.dataset={name}"])
        want = RunConfig()
        want.data.dataset = name
        assert cfg == want.resolved()
    assert load_config() == RunConfig().resolved()  # the embedded default is unchanged
    assert find_recipe("../recipes/har") is None and find_recipe("") is None


def test_recipe_lookup_ignores_case():
    assert load_config(None, ["data.dataset=har"]).teacher.ensemble == \
        load_config(None, ["data.dataset=HAR"]).teacher.ensemble


def test_configs_har_yaml_mirrors_the_recipe():
    """configs/har.yaml is the HAR recipe plus the data path: one recipe, two ways to run it."""
    recipe = yaml.safe_load(HAR_RECIPE.read_text())
    mirror = yaml.safe_load((ROOT / "configs" / "har.yaml").read_text())
    assert mirror["data"].pop("path") == "../../shared/data/HAR"
    assert mirror == recipe
    with_file = load_config(ROOT / "configs" / "har.yaml")
    without = load_config(None, ["data.dataset=HAR", f"data.path={with_file.data.path}"])
    assert with_file == without


@pytest.mark.parametrize("text, key, problem", [
    ("distill:\n  nope: 1\n", "distill.nope", "unknown key"),
    ("teacher:\n  ensemble: three\n", "teacher.ensemble", "integer"),
    ("teacher:\n  ensemble: 99\n", "teacher.ensemble", "out of range"),
    ("data:\n  dataset: HHAR\n", "data.dataset", "names 'HHAR'"),
    ("data:\n  path: /somewhere\n", "data.path", "input path"),
    ("distill:\n  reference_compat: true\n  target_kd: true\n", "distill.target_kd",
     "remove one"),
], ids=["unknown-key", "wrong-type", "out-of-range", "other-dataset", "input-path",
        "contradiction"])
def test_a_bad_recipe_is_an_error_naming_the_recipe_file(tmp_path, monkeypatch, text, key,
                                                          problem):
    (tmp_path / "har.yaml").write_text(text)
    monkeypatch.setattr(config_loader, "RECIPE_DIR", tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.dataset=HAR"])
    msg = str(info.value)
    assert f"'{key}'" in msg and str(tmp_path / "har.yaml") in msg and problem in msg


def test_a_recipe_preset_never_overrides_a_switch_the_user_set(tmp_path, monkeypatch):
    (tmp_path / "har.yaml").write_text("distill:\n  reference_compat: true\n"
                                       "  cross_kd: expected\n")
    monkeypatch.setattr(config_loader, "RECIPE_DIR", tmp_path)
    cfg = load_config(None, ["data.dataset=HAR"])
    assert cfg.distill.reference_compat and not cfg.distill.target_kd
    assert cfg.distill.cross_kd == "expected"
    with pytest.raises(ConfigError, match="reference_compat=false") as info:
        load_config(None, ["data.dataset=HAR", "distill.target_kd=true"])
    assert str(tmp_path / "har.yaml") in str(info.value)
    cfg = load_config(None, ["data.dataset=HAR", "distill.reference_compat=false",
                             "distill.target_kd=true"])
    assert cfg.distill.target_kd and not cfg.distill.reference_compat
    assert cfg.distill.cross_kd == "expected"  # the rest of the recipe still applies


def test_config_show_names_the_recipe_and_each_value_source(capsys):
    from shared.cli.main import main

    assert main(["config", "show", "--set", "data.dataset=HAR", "--set", "distill.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert f"recipe: HAR ({HAR_RECIPE})" in out
    assert "(recipe)" in out and "(--set)" in out
    assert main(["config", "show", "--set", "data.dataset=HAR", "--json"]) == 0
    shown = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert shown["teacher.ensemble"]["source"] == str(HAR_RECIPE)
    assert shown["data.dataset"]["source"] == "--set"
    assert shown["seed"]["source"] == "default"
    assert main(["config", "show", "--config", str(ROOT / "configs" / "har.yaml")]) == 0
    assert "recipe:" not in capsys.readouterr().out


def test_deploy_sends_what_the_cloud_needs_to_rebuild_the_config_over_the_recipe(tmp_path):
    """The cloud rebuilds a submitted config from `--set` values alone, so it applies the recipe
    under them: a file's value equal to the dataclass default must still travel."""
    from server.deploy.run_overrides import config_overrides

    file = tmp_path / "run.yaml"
    file.write_text("data:\n  dataset: HAR\nteacher:\n  ensemble: 1\n")
    for path, sets in ((str(file), ["fed.clients=4"]), (None, ["data.dataset=HAR"]),
                       (None, ["data.dataset=HAR", "distill.batch_size=0"])):
        overrides = config_overrides(path, sets)
        assert load_config(None, overrides) == load_config(path, sets), (path, sets)


def test_recipes_ship_as_package_data():
    """An install from the repo carries shared/config/recipes/*.yaml (pyproject's package data)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert any(p == "shared*" for p in meta["packages"]["find"]["include"])
    assert "*.yaml" in meta["package-data"]["*"]
    assert (ROOT / "shared" / "config" / "recipes" / "__init__.py").is_file()  # a regular package


def test_the_private_har_config_is_valid_and_its_noise_shares_are_sound():
    """configs/har-private.yaml (BENCHMARKS.md's record-DP rows) loads, and the start-up check
    that refuses noise shares without secure aggregation or with local steps accepts it."""
    from server.fed.dp.federation import check_record_noise, check_teacher_source

    cfg = load_config(ROOT / "configs" / "har-private.yaml")
    f = cfg.fed
    assert (f.dp, f.record_noise, f.secure_aggregation, f.bn_policy, f.dp_clip_scope) == \
        ("record", "shares", True, "reestimate", "per-network")
    check_record_noise(cfg)
    check_teacher_source(cfg)
