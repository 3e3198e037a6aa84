"""One engine, two placements: a 1-client federation with 1 local step IS centralized UNI-KD.

Both call the same shared.unikd.engine terms with the same batches and dropout seeds; the federated
split only moves the target gradient over the wire (float32, lossless) and adds it to the
source gradient with weight n/N = 1.0. So losses and weights must agree to the bit; BN running
statistics are recomposed from EMA updates, r_c + (1-m)(r_src - r0), which reorders float
operations: they agree to float32 rounding (1e-6 relative).
"""

from __future__ import annotations

import pytest
import torch

from server.central.trainer import distill_unikd
from server.fed.harness import InProcessGrid, load_component
from server.fed.rounds import federate
from server.central.teacher import save_teacher, train_dann_teacher
from shared.config import load_config
from shared.data.scenario import load_scenario
from shared.protocol.records import student_state


# the live weights are compared (the EMA's own test below turns it on)
BASE = ["distill.epochs=2", "teacher.epochs=1", "fed.clients=1", "fed.local_steps=1",
        "fed.partition=iid", "seed=3", "distill.ema_decay=0"]
SWITCHES = ["distill.adv_to_student=false", "distill.double_target_forward=false",
            "distill.detach_weights=true"]  # the variants below override these


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data and a saved teacher; each test builds its own config (nothing shared mutates)."""
    cfg = load_config(overrides=BASE)
    data = load_scenario(cfg.data)
    teacher = train_dann_teacher(data.spec, data, cfg.teacher, cfg.seed, progress=False)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_teacher(path, teacher, cfg, data)
    return path, data, teacher


def config(teacher_path, *variant: str):
    preset = any(v.startswith("distill.reference_compat") for v in variant)
    return load_config(overrides=[*BASE, *([] if preset else SWITCHES),
                                  f"teacher.checkpoint={teacher_path}", *variant])


@pytest.mark.parametrize("variant", [[], ["distill.adv_to_student=true",
                                          "distill.detach_weights=false"],
                                     ["distill.double_target_forward=true"],
                                     # the reference's recipe in its federable form
                                     ["distill.reference_compat=true",
                                      "distill.cross_kd=expected"],
                                     # the label-free target terms (issue 25), alone and together
                                     ["distill.im_weight=1.0"],
                                     ["distill.pl_weight=1.0", "distill.pl_threshold=0.5"],
                                     ["distill.im_weight=0.5", "distill.pl_weight=2.0",
                                      "distill.pl_threshold=0.8",
                                      "distill.double_target_forward=true"],
                                     # one local step on both sides is the same round
                                     ["fed.local_steps_mode=both"],
                                     ["fed.local_steps_mode=both", "distill.reference_compat=true",
                                      "distill.cross_kd=expected"],
                                     ["fed.local_steps_mode=both", "distill.im_weight=1.0",
                                      "distill.pl_weight=1.0", "distill.pl_threshold=0.5"],
                                     # the label-free terms on top of the HAR recipe (issue 25):
                                     # target-only, so they compose with reference_compat
                                     ["distill.reference_compat=true", "distill.cross_kd=expected",
                                      "distill.im_weight=1.0", "distill.pl_weight=1.0",
                                      "distill.pl_threshold=0.5"]])
def test_one_client_one_step_equals_centralized(setup, variant):
    path, data, teacher = setup
    cfg = config(path, *variant)
    central_losses = []
    central = distill_unikd(cfg, data, teacher, progress=False,
                            step_hook=lambda g, s, t: central_losses.append((s["loss"], t["loss"])))

    fed_losses = []
    grid = InProcessGrid(load_component("client.node.client_app:app"), 1)
    fed = federate(grid, cfg, progress=False,
                   on_round=lambda r, cloud, row: fed_losses.append((row["src_loss"],
                                                                      row["trg_loss"])))
    assert len(fed_losses) == len(central_losses) > 10
    assert fed_losses == central_losses  # bit-identical losses, every step

    fed_nets = fed.cloud.nets
    c_state = {**{f"student.{k}": v for k, v in central.student.state_dict().items()},
               **{f"adapter.{k}": v for k, v in central.extras["adapter"].state_dict().items()}}
    f_state = student_state(fed_nets)
    for name, p in fed_nets.student.named_parameters():
        assert torch.equal(p, central.student.get_parameter(name)), name
    for mod in ("d_f", "d_d", "adapter"):
        for name, p in getattr(fed_nets, mod).named_parameters():
            assert torch.equal(p, central.extras[mod].get_parameter(name)), f"{mod}.{name}"
    for key, v in c_state.items():  # BN running stats: equal up to float32 rounding
        assert torch.allclose(f_state[key].double(), v.double(), rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("mode,terms", [("edge", []), ("both", []),
                                        ("edge", ["teacher.w_ent=0.5"]),
                                        ("both", ["teacher.w_ent=0.5", "teacher.w_dom=0.7"])])
def test_federated_dann_teacher_equals_centralized(setup, mode, terms):
    """The teacher's DANN pre-training splits the same way: 1 client reproduces it exactly,
    also with every member in one exchange (both mode, one local step) and with the target
    entropy term, which the node computes."""
    from server.fed.cloud import load_source
    from server.fed.teacher import federated_dann_teacher
    from server.fed.transport import Sender

    path, data, _ = setup
    cfg = config(path, f"fed.local_steps_mode={mode}", "teacher.ensemble=1", *terms)  # one member's
    central = train_dann_teacher(data.spec, data, cfg.teacher, cfg.seed, progress=False,
                                 grl_ramp=cfg.distill.grl_ramp)
    grid = InProcessGrid(load_component("client.node.client_app:app"), 1)
    fed = federated_dann_teacher(Sender(grid, None), cfg, load_source(cfg), grid.node_ids,
                                 len(data.trg_train), progress=False)
    for name, p in fed.named_parameters():
        assert torch.equal(p, central.get_parameter(name)), name
    for name, b in fed.named_buffers():
        ref = central.get_buffer(name)
        assert torch.allclose(b.double(), ref.double(), rtol=1e-5, atol=1e-6), name


def test_with_the_ema_one_client_reports_and_delivers_what_centralized_does(setup):
    """`distill.ema_decay` on: the same EMA module on both placements, so the federation's
    evaluations (each epoch's end) and its final student equal the centralized ones; training
    itself continues on the live weights, which still agree to the bit."""
    from shared.unikd.evaluation import evaluate

    path, data, teacher = setup
    cfg = config(path, "distill.ema_decay=0.9")
    central_mf1 = []
    central = distill_unikd(cfg, data, teacher, progress=False, epoch_hook=lambda e, student:
                            central_mf1.append(evaluate(student, data.trg_test,
                                                        data.spec.classes)["mf1"]))
    grid = InProcessGrid(load_component("client.node.client_app:app"), 1)
    fed = federate(grid, cfg, progress=False)

    assert [e["num-examples"] for e in fed.evals] == [len(data.trg_test)] * cfg.distill.epochs
    assert [e["mf1"] for e in fed.evals] == central_mf1  # every evaluation, to the bit
    reported = fed.cloud.reported_nets()
    for mod, central_mod in (("student", central.student), ("adapter", central.extras["adapter"])):
        for name, p in getattr(reported, mod).named_parameters():
            assert torch.equal(p, central_mod.get_parameter(name)), f"{mod}.{name}"
        for name, b in getattr(reported, mod).named_buffers():  # BN: float32 rounding, as above
            assert torch.allclose(b.double(), central_mod.get_buffer(name).double(), rtol=1e-5,
                                  atol=1e-6), f"{mod}.{name}"
    for name, p in fed.cloud.nets.student.named_parameters():  # training: the live weights
        assert torch.equal(p, central.extras["live_student"].get_parameter(name)), name
        assert not torch.equal(p, reported.student.get_parameter(name)), name  # EMA != live
