"""Registry of the paper's datasets (spec §2.2), plus a generic spec read from files.

A `DatasetSpec` carries everything the models and loaders need; nothing else keys on the name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        """What a model needs, as plain values (the wire's `spec` record, checkpoint metadata).

        Scenarios and the folder name stay behind: they describe the cloud's files.
        """
        return {f: getattr(self, f) for f in MODEL_FIELDS} | {
            "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, values: Any, where: str = "spec") -> DatasetSpec:
        """The inverse of `to_dict`; a missing field or a wrong type is an error naming it."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        missing = [f for f in MODEL_FIELDS if f not in values]
        if missing:
            raise UnikdError(f"{where}: missing {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for name in MODEL_FIELDS:
            value = values[name]
            want = {"str": str, "int": int, "float": (int, float)}[types[name]]
            if isinstance(value, bool) or not isinstance(value, want):
                raise UnikdError(f"{where}: '{name}' must be {types[name]}, got {value!r}")
            kwargs[name] = float(value) if types[name] == "float" else value
        for name in ("channels", "length", "classes", "kernel", "stride", "d_d_hidden",
                     "batch_size"):
            if kwargs[name] < 1:
                raise UnikdError(f"{where}: '{name}' must be >= 1, got {kwargs[name]}")
        names = tuple(str(c) for c in values.get("class_names", ()) or ())
        return cls(**kwargs, class_names=names)


# The fields that decide the models' shapes and the default batch size.
MODEL_FIELDS = ("name", "channels", "length", "classes", "kernel", "stride", "dropout",
                "d_d_hidden", "batch_size")


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


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def first_conv(length: int) -> tuple[int, int]:
    """Kernel and stride of the first conv for windows of `length` samples: ONE rule.

        kernel = round(0.45 * sqrt(L)),  stride = clamp(round(L / 500), 1, 6)   (halves round up)

    The kernel grows with the square root of the window and the stride aims at about 500
    first-conv outputs, never striding more than the paper's 6. It reproduces the paper's
    choices exactly (spec §2.2): HAR/HHAR L=128 -> (5, 1), SSC L=3000 -> (25, 6),
    FD L=5120 -> (32, 6); a 1x1024 window gets (14, 2) instead of HAR's (5, 1) and costs about
    what an SSC window costs rather than 8x a HAR window at stride 1. (Any factor in
    [0.4473, 0.4542) reproduces the three kernels; 0.45 is the round number inside.)
    """
    if length < 1:
        raise UnikdError(f"window length must be >= 1, got {length}")
    kernel = max(1, _round_half_up(0.45 * math.sqrt(length)))
    stride = min(6, max(1, _round_half_up(length / 500)))
    return kernel, stride


def generic_spec(channels: int, length: int, classes: int, name: str = "GENERIC") -> DatasetSpec:
    """A spec for data outside the registry: shape from the files, first conv from
    `first_conv(length)`, HAR's dropout, discriminator width and batch size otherwise."""
    kernel, stride = first_conv(length)
    return DatasetSpec(
        name, channels=channels, length=length, classes=classes, kernel=kernel, stride=stride,
        dropout=0.5, d_d_hidden=64, batch_size=32,
    )


# ---------------------------------------------------------------- scenarios
#
# One scenario is SRC->TRG (also SRC:TRG or SRC→TRG). A multi-target scenario, one target domain
# per edge under `fed.partition: per-domain`, joins its targets with '+': 2->11+13+16 (the
# config also accepts the older comma form 2->11,13,16). A list of scenarios (the bench's
# --scenarios) is separated by ',' or ';': "2->11,7->13" or "2->11+13+16;7->13+18".
# Internally a scenario is (source, target) with several targets joined by ',' (what the
# partitioner and the run folders have always used); `format_scenario` writes the '+' form.

_SEPARATORS = ("->", ":", "→")
SCENARIO_FORMS = "expected SRC->TRG, e.g. 2->11 or 2:11, or SRC->T1+T2+... for several targets"


def scenario_targets(target: str) -> list[str]:
    """'11' -> ['11']; '11+13+16' or '11,13,16' -> ['11', '13', '16'] (empty ids kept, so the
    caller can reject them)."""
    return [t.strip() for t in target.replace("+", ",").split(",")]


def parse_scenario(text: str) -> Scenario:
    """'2->11', '2:11' or '2→11' -> ('2', '11'); '2->11+13+16' -> ('2', '11,13,16')."""
    for sep in _SEPARATORS:
        if sep in text:
            src, trg = (p.strip() for p in text.split(sep, 1))
            targets = scenario_targets(trg)
            if src and trg and all(targets) and not any(s in trg for s in _SEPARATORS):
                return src, ",".join(targets)
            break
    raise UnikdError(f"bad scenario '{text}': {SCENARIO_FORMS}")


def format_scenario(scenario: Scenario) -> str:
    """('2', '11') -> '2->11'; ('2', '11,13,16') -> '2->11+13+16'."""
    src, trg = scenario
    return f"{src}->{'+'.join(scenario_targets(trg))}"


def parse_scenario_list(text: str) -> list[Scenario]:
    """A list of scenarios: separated by ';' when the text has one, else by ','."""
    sep = ";" if ";" in text else ","
    pieces = [p.strip() for p in text.split(sep)]
    if not any(pieces):
        raise UnikdError(f"bad scenario list '{text}': {SCENARIO_FORMS}")
    out: list[Scenario] = []
    for piece in pieces:
        if not piece:
            continue
        if not any(s in piece for s in _SEPARATORS) and out:
            raise UnikdError(
                f"bad scenario list '{text}': '{piece}' is not a scenario; for several target "
                f"domains in one scenario join them with '+', e.g. "
                f"{format_scenario((out[-1][0], out[-1][1] + ',' + piece))}")
        out.append(parse_scenario(piece))
    return out
