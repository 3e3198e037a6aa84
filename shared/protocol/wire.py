"""THE wire manifest: every message type, and every record that may cross the network, in each
direction.

Down (cloud -> edge): model weights, the round's schedule and settings, the dataset's model
shape, normalisation stats and, once, the frozen teacher. Up (edge -> cloud): gradients shaped
exactly like parameters, BN running statistics, scalar metrics from a fixed list and, under DP
or secure aggregation with the expected cross KD, one number (TARGET_W) inside the private update. Nothing
with a per-sample dimension and no label ever goes up: `check_outgoing` enforces it on every
client reply.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from shared.errors import UnikdError

# ---- message types: Flower's "<category>" or "<category>.<action>"; the ClientApp registers
# the handler of each with @app.<category>(action_of(type)) (client/node/client_app.py)
QUERY = MessageType.QUERY  # round 0: window counts (and the model tag of an edge service)
TRAIN = MessageType.TRAIN  # a UNI-KD round (under secure aggregation: its stage 0)
TRAIN_TEACHER = "train.teacher"  # a federated DANN teacher round
EVALUATE = MessageType.EVALUATE  # federated evaluation: confusion counts only

# ---- down: cloud -> edge
STUDENT = "student"  # student + adapter state dict (parameters and BN buffers)
D_F = "d_f"  # feature-domain discriminator weights
D_D = "d_d"  # data-domain discriminator weights
CONFIG = "config"  # RoundConfig: clock, schedule values, hyperparameters, DP settings
SPEC = "spec"  # the dataset's model shape (shared.protocol.records.spec_to_record): name,
#   channels, length, classes, first-conv kernel and stride, dropout, d_d_hidden, batch_size,
#   class_names. Nodes build every model from it: no registry lookup, no cloud files needed
SIM = "sim"  # SimSetup: where a simulated node finds its windows (deployed nodes ignore it)
NORM = "norm"  # per-channel mean/std of the source training split
TEACHER = "teacher"  # frozen teacher snapshot, sent once per node (edge placement);
#   arrays "<member>.<name>" (shared.protocol.checkpoints.teacher_to_arrays), count in
#   RoundConfig.teacher_members
HINT_PROTOTYPES = "hint.prototypes"  # cloud placement with fed.cloud_hint=prototypes: array
#   "feat" [C, 128], the teacher's mean feature per class over the labelled SOURCE windows (a
#   cloud-side statistic; no target window is involved), for the edges' feature hint
PATH_PRECOND = "path.precond"  # fed.local_path=preconditioned (both mode, L > 1): the cloud's
#   Adam preconditioner 1/(sqrt(v_hat)+eps), one array per parameter, named as in
#   UniKDNets.named_parameters(); a function of the aggregates the cloud has already applied
PATH_CONTROL = "path.control"  # and the cloud's source pseudo-gradient of this round, the same
#   names: the edge's stand-in for the source half along its local path (no target data in it)
EVAL_STUDENT = "eval.student"  # a training round that carries an evaluation (RoundConfig.evaluate)
# with the student's EMA on: the reported student + adapter state, which the node scores instead
# of the sent training weights (fed.evaluation=piggyback); down only
TEACHER_TRAIN = "teacher.train"  # teacher weights during federated DANN pre-training
TEACHER_DISC = "teacher-disc"  # the DANN teacher's domain discriminator
DELIVERY = "delivery"  # ConfigRecord of the final delivery: tag (content hash), run, round

# The final delivery (message type DELIVER, after the last round to every node that reported a
# model-tag, i.e. has an edge service; again at its next contact when its model-tag differs): STUDENT, NORM, CONFIG, SIM and DELIVERY go down;
# the node installs the student as its edge service's next version and answers with
# DELIVER_METRICS only. Nothing else comes up.
DELIVER = "train.deliver"
DELIVER_RECORDS = (STUDENT, NORM, CONFIG, SIM, SPEC, DELIVERY)

# ---- up: edge -> cloud
STUDENT_GRAD = "student.grad"  # (pseudo-)gradient for student + adapter parameters
D_F_GRAD = "d_f.grad"
D_D_GRAD = "d_d.grad"
STUDENT_BN = "student.bn"  # BN running statistics after the local steps
TARGET_W = "target.w"  # distill.cross_kd=expected under fed.dp or secure aggregation only:
#   array "w" [1] = s * (the node's mean confusion weight over its windows, a number in [0, 1]),
#   s the public scale of shared/privacy/clipping.py w_bounds; under record DP its DP-SGD
#   estimate (noised with the gradients, per-window bound included), under local DP noised with
#   the update; under secure aggregation one more coordinate of the masked vector, never sent
#   alone. One number per node: nothing per window. Without DP and secure aggregation the cloud
#   reads the metric `w_mean` instead
TARGET_W_SHAPES = {"w": (1,)}
TEACHER_GRAD = "teacher.grad"  # federated DANN: target-domain gradient for the teacher
TEACHER_DISC_GRAD = "teacher-disc.grad"
TEACHER_BN = "teacher.bn"
METRICS = "metrics"

# ---- secure aggregation (fed.secure_aggregation; server/fed/secagg.py, client/node/secagg.py)
# Stage 0 is the `train` message itself: the node computes its update, keeps it, and replies
# with two X25519 public keys instead of any gradient. Then three more exchanges:
SECAGG_SHARES_TYPE = "train.secagg_shares"  # down: peers' keys; up: encrypted Shamir shares
SECAGG_MASK_TYPE = "train.secagg_mask"  # down: the shares addressed to the node; up: masked vector
SECAGG_UNMASK_TYPE = "train.secagg_unmask"  # down: survivors/dropped sets; up: the shares asked
# every message type the cloud sends; each has its ClientApp handler (tests/test_wire.py)
MESSAGE_TYPES = (QUERY, TRAIN, TRAIN_TEACHER, EVALUATE, DELIVER, SECAGG_SHARES_TYPE,
                 SECAGG_MASK_TYPE, SECAGG_UNMASK_TYPE)
SECAGG_CONFIG = "secagg.config"  # down ConfigRecord: round, threshold, participant/survivor sets
SECAGG_PEERS = "secagg.peers"  # down: "<node>.c_pk" / "<node>.s_pk" (uint8[32]) per participant
SECAGG_INBOX = "secagg.inbox"  # down: "from.<node>" ciphertexts addressed to this node
SECAGG_KEYS = "secagg.keys"  # up: "c_pk", "s_pk" (uint8[32]): share-encryption and mask keys
SECAGG_SHARES = "secagg.shares"  # up: "to.<node>" (uint8[SHARE_CIPHER_BYTES]) per peer
SECAGG_MASKED = "secagg.masked"  # up: "y" (uint64[d]): the masked, quantised update
SECAGG_UNMASK = "secagg.unmask"  # up: "b.<node>" (survivor's self-mask share) or "sk.<node>"
#   (dropped node's mask-key share), uint8[32], never both for one node
KEY_BYTES, SHARE_BYTES = 32, 32  # X25519 key; one Shamir share of a 32-byte secret
SHARE_CIPHER_BYTES = 12 + 2 * SHARE_BYTES + 16  # AES-GCM nonce + (b share, sk share) + tag
SECAGG_DTYPES = {SECAGG_KEYS: "uint8", SECAGG_SHARES: "uint8", SECAGG_MASKED: "uint64",
                 SECAGG_UNMASK: "uint8"}
SECAGG_METRICS = frozenset({"client-id", "round"})

# ---- both directions: shared.protocol.packing folds every ArrayRecord of a message into one
# Array under this key (one Flower object instead of one per array). It is unpacked before any
# check below, and `check_outgoing` runs on the unpacked reply before the node packs it.
PACKED = "packed"

GRAD_RECORDS = {STUDENT_GRAD: STUDENT, D_F_GRAD: D_F, D_D_GRAD: D_D}
GRAD_KEYS = tuple(GRAD_RECORDS)  # a client's update: the three gradient records together
W_UPDATE_KEYS = (*GRAD_KEYS, TARGET_W)  # ... and the w coordinate where it travels (TARGET_W)

TEACHER_DANN_DOM = "teacher-dann-dom"
# Scalars a client may report. Each is a count or a mean over its batches, never per sample.
TRAIN_METRICS = frozenset({
    "client-id", "round", "num-examples",
    "local-steps",  # the local steps the node ran: the cloud refuses a train reply whose count
    #   is not the round's (a pseudo-gradient over other steps has another scale)
    "loss", "kd", "hint", "dom", "adv", "d_f", "w_mean",
    "im", "pl", "pl_kept",  # the label-free target terms, where on (pl_kept: kept fraction)
    TEACHER_DANN_DOM,  # teacher rounds: the target half of the domain loss (the cloud logs it)
    "model-tag",  # query: the delivery tag of the student in the node's service (tag_number)
    "confusion",  # a round with RoundConfig.evaluate (fed.evaluation=piggyback): the received
    #   student's confusion counts on the node's test windows, as an evaluation reply's
})
# Federated evaluation: the confusion matrix (C*C counts, summed over the client's test windows).
EVAL_METRICS = frozenset({"client-id", "round", "num-examples", "confusion"})
# The final delivery's reply: which version the node's service now runs (0: none installed).
DELIVER_METRICS = frozenset({"client-id", "round", "model-version"})


def tag_number(tag: str) -> int:
    """A model tag (any string: a delivery's content hash, an edge-pull's) as a MetricRecord
    integer: 60 bits of its SHA-256; 0 for none."""
    import hashlib

    return int(hashlib.sha256(tag.encode()).hexdigest()[:15], 16) if tag else 0


def action_of(message_type: str) -> str:
    """The action a ClientApp handler of this message type is registered under (Flower routes
    "train.teacher" to @app.train("teacher"), "train" to @app.train(), i.e. "default")."""
    return message_type.partition(".")[2] or "default"


class WireViolation(UnikdError):
    """Something not in the manifest was about to leave a client."""


def shapes_of(tensors: Mapping) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a state dict (or of named parameters)."""
    return {k: tuple(v.shape) for k, v in tensors.items()}


def expected_up_shapes(student_state: Mapping, d_f_state: Mapping, d_d_state: Mapping,
                       student_buffers: Mapping) -> dict[str, dict[str, tuple[int, ...]]]:
    """Exact shapes allowed per upward ArrayRecord, taken from the models themselves."""
    return {STUDENT_GRAD: shapes_of(student_state), D_F_GRAD: shapes_of(d_f_state),
            D_D_GRAD: shapes_of(d_d_state), STUDENT_BN: shapes_of(student_buffers),
            TARGET_W: dict(TARGET_W_SHAPES)}


def expected_teacher_shapes(teacher_params: Mapping, disc_params: Mapping,
                            teacher_buffers: Mapping) -> dict[str, dict[str, tuple[int, ...]]]:
    """Upward shapes during federated DANN pre-training of the teacher."""
    return {TEACHER_GRAD: shapes_of(teacher_params), TEACHER_DISC_GRAD: shapes_of(disc_params),
            TEACHER_BN: shapes_of(teacher_buffers)}


def check_outgoing(content: RecordDict, shapes: dict[str, dict[str, tuple[int, ...]]],
                   metric_keys: frozenset[str] = TRAIN_METRICS, num_classes: int = 0) -> None:
    """Raise WireViolation unless every record of a client reply is declared here."""
    for key, record in content.items():
        if isinstance(record, ConfigRecord):
            raise WireViolation(f"record '{key}': clients send no ConfigRecord")
        if isinstance(record, MetricRecord):
            if key != METRICS:
                raise WireViolation(f"metric record '{key}' is not in the manifest")
            for name, value in record.items():
                if name not in metric_keys:
                    raise WireViolation(f"metric '{name}' is not in the manifest")
                if isinstance(value, list) and not (name == "confusion"
                                                    and len(value) == num_classes**2):
                    raise WireViolation(f"metric '{name}' is a list of {len(value)} values; "
                                        f"only the {num_classes}x{num_classes} confusion counts may be")
            continue
        if not isinstance(record, ArrayRecord):
            raise WireViolation(f"record '{key}' has unknown type {type(record).__name__}")
        if key not in shapes:
            raise WireViolation(f"array record '{key}' is not in the manifest")
        allowed = shapes[key]
        for name, arr in record.items():
            if name not in allowed:
                raise WireViolation(f"array '{key}/{name}' is not in the manifest")
            if tuple(arr.shape) != allowed[name]:
                raise WireViolation(f"array '{key}/{name}' has shape {list(arr.shape)}, "
                                    f"the manifest allows {list(allowed[name])}")
            if key in SECAGG_DTYPES:
                if arr.dtype != SECAGG_DTYPES[key]:
                    raise WireViolation(f"array '{key}/{name}' has dtype {arr.dtype}; the "
                                        f"protocol sends {SECAGG_DTYPES[key]}")
                continue
            counter = name.endswith("num_batches_tracked")
            if arr.dtype != ("int64" if counter else "float32"):
                raise WireViolation(f"array '{key}/{name}' has dtype {arr.dtype}; only BN "
                                    f"counters are int64, everything else float32")


def expected_secagg_shapes(record: str, peers: list[int] = (), length: int = 0
                           ) -> dict[str, dict[str, tuple[int, ...]]]:
    """Exact upward shapes of one secure-aggregation stage: nothing sized by the data."""
    if record == SECAGG_KEYS:
        names = {"c_pk": (KEY_BYTES,), "s_pk": (KEY_BYTES,)}
    elif record == SECAGG_SHARES:
        names = {f"to.{p}": (SHARE_CIPHER_BYTES,) for p in peers}
    elif record == SECAGG_MASKED:
        names = {"y": (length,)}
    elif record == SECAGG_UNMASK:
        names = {f"{kind}.{p}": (SHARE_BYTES,) for p in peers for kind in ("b", "sk")}
    else:
        raise WireViolation(f"'{record}' is not a secure-aggregation record")
    return {record: names}
