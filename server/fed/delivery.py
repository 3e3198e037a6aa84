"""The final delivery: after the last round every node with an edge service (it reported a
model tag at the count query: node config `model-dir`) gets the final student
(`train.deliver`, records wire.DELIVER_RECORDS) and installs it as the service's next version.
Simulated nodes have no service and get nothing.

Only the student (with its source normalisation) goes down; each node answers with the version
number its service now runs (wire.DELIVER_METRICS). The delivery is tagged with a hash of the
weights, so a node that already runs it installs nothing. With a `delivery_dir` (the deployed
ServerApp keeps one in the cloud's state dir) the delivery is also kept as `latest.pt`: at the
next run's count query a node that reports another model tag (it missed the end of the run) gets
it before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict

from server.fed.transport import Sender
from shared.protocol import checkpoints, wire
from shared.protocol.records import SetupConfig, SimSetup, to_record

log = logging.getLogger(__name__)
LATEST = "latest.pt"


@dataclasses.dataclass(frozen=True)
class Delivery:
    student: dict[str, torch.Tensor]  # wire student state: "student." and "adapter." keys
    mean: torch.Tensor
    std: torch.Tensor
    dataset: str
    round: int
    run: str
    tag: str = ""
    spec: dict = dataclasses.field(default_factory=dict)  # DatasetSpec.to_dict(): model shape

    def __post_init__(self) -> None:
        if not self.tag:
            object.__setattr__(self, "tag", student_tag(self.student))


def student_tag(state: dict[str, torch.Tensor]) -> str:
    """A content hash of the weights: equal weights, equal tag."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def delivery_content(d: Delivery, rc: SetupConfig, sim: SimSetup) -> RecordDict:
    rc = dataclasses.replace(rc, round=d.round, dataset=d.dataset)
    return RecordDict({
        wire.STUDENT: to_record(d.student),
        wire.NORM: to_record({"mean": d.mean, "std": d.std}),
        wire.CONFIG: rc.to_record(), wire.SIM: sim.to_record(),
        wire.SPEC: ConfigRecord(dict(d.spec)),
        wire.DELIVERY: ConfigRecord({"tag": d.tag, "run": d.run, "round": d.round})})


def deliver(send: Sender, nodes: list[int], d: Delivery, rc: SetupConfig, sim: SimSetup
            ) -> dict[int, int]:
    """Send the delivery to `nodes`; {client id: version now in its service} of those that
    installed it (0: a node without a model directory). Failures are logged with the node."""
    if not nodes:
        return {}
    replies = send.to_all(nodes, delivery_content(d, rc, sim), wire.DELIVER, d.round)
    installed: dict[int, int] = {}
    for r in replies:
        if r.has_error():
            log.warning("round %d: node %s did not install the final student: %s", d.round,
                        r.metadata.src_node_id, r.error.reason)
            continue
        m = r.content[wire.METRICS]
        installed[int(m["client-id"])] = int(m["model-version"])
    missed = len(nodes) - len(installed)
    log.info("final student %s (round %d) delivered: %s%s", d.tag[:12], d.round,
             ", ".join(f"client {c} -> v{v}" for c, v in sorted(installed.items())) or "none",
             f"; {missed} node(s) missed it (they get it at their next contact)" if missed else "")
    return installed


def save_latest(delivery_dir: Path, d: Delivery) -> None:
    checkpoints.save(Path(delivery_dir) / LATEST, checkpoints.FED_DELIVERY,
                     dataclasses.asdict(d))


def load_latest(delivery_dir: Path | None) -> Delivery | None:
    if delivery_dir is None or not (Path(delivery_dir) / LATEST).is_file():
        return None
    ckpt = checkpoints.load(Path(delivery_dir) / LATEST, checkpoints.FED_DELIVERY)
    return Delivery(**{f.name: ckpt[f.name] for f in dataclasses.fields(Delivery) if f.name in ckpt})


def needs_delivery(tags: dict[int, int], latest: Delivery) -> list[int]:
    """Nodes that reported a model tag (they have a model directory) other than the latest's."""
    want = wire.tag_number(latest.tag)
    return sorted(n for n, tag in tags.items() if tag != want)
