"""Per-dataset recommended recipes, shipped with the package: `<dataset in lower case>.yaml`.

`shared.config.load_config` applies a dataset's recipe over the dataclass defaults when no
config file is given (`unikd federate --set data.dataset=HAR`, `unikd bench ... --dataset HAR`);
`--set` values override it. A config file is a complete base of its own: with `--config`, no
recipe is applied. Each recipe is validated by the same typed loader as any config file.
"""
