"""The config of the messages around UNI-KD training: the count query, a federated teacher
round and a delivery (shared.protocol.records `SetupConfig`, `TeacherRoundConfig`), and the
setup records every node needs to find and normalise its windows.
"""

from __future__ import annotations

from flwr.app import RecordDict

from server.fed.cloud import SourceData, sim_setup
from shared.config import RunConfig
from shared.protocol import wire
from shared.protocol.records import SetupConfig, spec_to_record, to_record


def setup_config(cfg: RunConfig, source: SourceData, kind: type[SetupConfig] = SetupConfig,
                 **fields) -> SetupConfig:
    """A `kind` config with the run's seed, dataset and record-DP release settings, and `fields`.

    Under record DP the node releases its window count once, noised with `dp_count_std`, and
    clips its teacher-round gradients to `dp_clip`; outside it nothing is released noised.
    """
    f = cfg.fed
    record = f.dp == "record"
    privacy = {"dp_mode": "record" if record else "off", "dp_clip": f.dp_clip if record else 0.0,
               "dp_count_std": f.dp_count_std if record else 0.0,
               "dp_clip_scope": f.dp_clip_scope}
    return kind(**{"seed": cfg.seed, "dataset": source.spec.name, **privacy, **fields})


def setup_content(cfg: RunConfig, source: SourceData, config: SetupConfig) -> RecordDict:
    """The records every node needs to find and normalise its windows, plus `config`."""
    return RecordDict({
        wire.NORM: to_record({"mean": source.normalizer.mean, "std": source.normalizer.std}),
        wire.SIM: sim_setup(cfg, source).to_record(), wire.CONFIG: config.to_record(),
        wire.SPEC: spec_to_record(source.spec)})
