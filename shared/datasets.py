"""Registry of the paper's datasets (spec §2.2), plus a generic spec read from files.

A `DatasetSpec` carries everything the models and loaders need; nothing else keys on the name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from shared.errors import UnikdError

Scenario = tuple[str, str]  # (source domain, target domain)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    length: int
    classes: int
    kernel: int  # first conv kernel size
    stride: int  # first conv stride
    dropout: float
    d_d_hidden: int  # hidden width of the data-domain (and feature-domain) discriminators
    batch_size: int
    main_scenarios: tuple[Scenario, ...] = ()
    extra_scenarios: tuple[Scenario, ...] = ()
    class_names: tuple[str, ...] = ()
    folder: str = ""  # folder name in the AdaTime layout

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        """The 10 AdaTime scenarios: main 5 then additional 5."""
        return self.main_scenarios + self.extra_scenarios


def _pairs(text: str) -> tuple[Scenario, ...]:
    return tuple(tuple(p.split("->")) for p in text.split())  # type: ignore[misc]


REGISTRY: dict[str, DatasetSpec] = {
    "HAR": DatasetSpec(
        "HAR", channels=9, length=128, classes=6, kernel=5, stride=1, dropout=0.5,
        d_d_hidden=64, batch_size=32,
        main_scenarios=_pairs("2->11 7->13 12->16 9->18 6->23"),
        extra_scenarios=_pairs("18->27 20->5 24->8 28->27 30->20"),
        class_names=("walk", "upstairs", "downstairs", "sit", "stand", "lie"), folder="HAR",
    ),
    "HHAR": DatasetSpec(
        "HHAR", channels=3, length=128, classes=6, kernel=5, stride=1, dropout=0.5,
        d_d_hidden=64, batch_size=32,
        main_scenarios=_pairs("2->7 0->6 1->6 3->8 4->5"),
        extra_scenarios=_pairs("0->2 5->0 6->1 7->4 8->3"),
        class_names=("bike", "sit", "stand", "walk", "stairs_up", "stairs_down"), folder="HHAR_SA",
    ),
    "FD": DatasetSpec(
        "FD", channels=1, length=5120, classes=3, kernel=32, stride=6, dropout=0.5,
        d_d_hidden=64, batch_size=32,
        main_scenarios=_pairs("0->3 0->1 2->1 1->2 2->3"),
        extra_scenarios=_pairs("1->0 1->3 3->0 3->1 3->2"),
        class_names=("healthy", "D1", "D2"), folder="FD",
    ),
    "SSC": DatasetSpec(
        "SSC", channels=1, length=3000, classes=5, kernel=25, stride=6, dropout=0.2,
        d_d_hidden=100, batch_size=128,
        main_scenarios=_pairs("0->11 12->5 7->18 16->1 9->14"),
        extra_scenarios=_pairs("3->19 18->12 13->17 5->15 6->2"),
        class_names=("W", "N1", "N2", "N3", "REM"), folder="EEG",
    ),
}

# The embedded synthetic default mimics HAR's shape, so HAR's architecture applies unchanged.
REGISTRY["SYNTH"] = replace(
    REGISTRY["HAR"], name="SYNTH", main_scenarios=_pairs("0->1 0->2 0->3"), extra_scenarios=(),
    folder="SYNTH",
)


def get_spec(name: str) -> DatasetSpec:
    """Look a dataset up by name (case-insensitive); an unknown name lists the known ones."""
    key = name.upper()
    if key not in REGISTRY:
        raise UnikdError(f"unknown dataset '{name}'; known: {', '.join(REGISTRY)}, or GENERIC with --data")
    return REGISTRY[key]


def generic_spec(channels: int, length: int, classes: int, name: str = "GENERIC") -> DatasetSpec:
    """A spec for data outside the registry: shape from the files, HAR's hyperparameters otherwise."""
    return DatasetSpec(
        name, channels=channels, length=length, classes=classes, kernel=5, stride=1, dropout=0.5,
        d_d_hidden=64, batch_size=32,
    )


def parse_scenario(text: str) -> Scenario:
    """'2->11', '2:11' or '2→11' -> ('2', '11')."""
    for sep in ("->", ":", "→"):
        if sep in text:
            src, trg = (p.strip() for p in text.split(sep, 1))
            if src and trg:
                return src, trg
    raise UnikdError(f"bad scenario '{text}': expected SRC->TRG, e.g. 2->11 or 2:11")
