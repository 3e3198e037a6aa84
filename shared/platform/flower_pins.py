"""The flwr version FedUNI-KD is written against, and every Flower internal it touches, checked.

Flower internals (not its public API) are used in these modules:

  client/node/supernode_internals.py   the edge: the SuperNode's polls and exit, its Runtime API,
                                       the per-task ClientApp runner and its bundle install
  client/node/fleet_probe.py           the edge's join check: one signed ActivateNode call
  server/deploy/control_internals.py   the cloud: the Control API calls, the app bundle's bytes
  shared/platform/flower_pulls.py      both: the object-pull backoff (SuperNode and ServerApp)

Each module uses only what this one declares: `check()` verifies all of it at start-up (a
different version, or a missing attribute or parameter, stops the edge executor, the node
launcher, app signing, the ServerApp and the cloud's Control API calls with a message naming
what changed, instead of silently running slower or unverified). What an upgrade of flwr must
re-check is listed in README "Upgrading flwr".

What we use, and why:
  flwr.cli.build.build_fab_from_disk      the exact bytes `flwr run` sends, to sign their hash
  flwr.supernode.cli.flower_supernode      Flower's own SuperNode entry point (our launcher
                                           patches, then calls it)
  flwr.supernode.start_client_internal     its module-level `time`: the idle poll (3 s) and the
                                           reply waits (0.5 s) are `time.sleep` calls there
  flwr.supercore.inflatable.inflatable_utils.pull_objects / pull_and_inflate_object_from_tree
                                           keyword defaults initial_backoff=1, backoff_cap=10
  flwr.supernode.runtime.run_clientapp     run_clientapp (what `flwr-clientapp` runs per task),
                                           pull_task_input (we check the bundle's signature
                                           right after it), push_message (the refusal reply),
                                           install_from_fab (re-extracts the whole bundle on
                                           every task; we skip to a complete install of the
                                           same sha256), flwr.common.config.get_project_dir
  flwr.supercore.object_ref.load_app, flwr.common.config.get_project_config
                                           how a task loads the bundle's ClientApp: the
                                           bundle's warm process imports it the same way once,
                                           and load_app reuses a module already imported
  flwr.supercore.exit.signal_handler.register_signal_handlers
                                           the SuperNode's SIGTERM handler puts back the
                                           handler it replaced before its graceful exit
                                           (which deactivates the node); flwr.supercore
                                           .constant.FORCE_EXIT_TIMEOUT_SECONDS ends that exit
  flwr.supercore.logger.FLOWER_LOGGER, flwr.supercore.retry.http_retry
  .make_simple_http_retry_invoker        the SuperNode's retries log their cause at DEBUG
                                           only: the launcher shows that line as a WARNING
  flwr.supercore.runtime.RuntimeHttpClient, flwr.supercore.interceptors
                                           .RuntimeVersionHttpInterceptor, flwr.proto.runtime_pb2
                                           .AcquireTaskRequest, flwr.supercore.constant.TaskType
                                           the SuperNode's Runtime API, as flower-superexec calls it
  flwr.supernode.fleet_http_client.FleetHttpClient, flwr.supernode.node_auth_http_interceptor
  .NodeAuthHttpInterceptor, flwr.proto.fleet_pb2.ActivateNodeRequest / DeactivateNodeRequest,
  flwr.common.constant.HEARTBEAT_MIN_INTERVAL, flwr.supercore.error.FlowerError / ApiErrorCode
                                           `unikd edge` asks the cloud whether its node key is
                                           let in with the SuperNode's own first call (signed
                                           ActivateNode), then deactivates it again, and reads
                                           a refusal with Flower's error decoder
  flwr.cli.utils.init_http_client_from_connection, flwr.cli.typing.SuperLinkConnection,
  flwr.proto.control_pb2.ListNodesRequest / ListRunsRequest / StartRunRequest /
  StreamLogsRequest, flwr.supercore.fab.Fab, flwr.common.serde.fab_to_proto /
  user_config_to_proto
                                           the Control API client and requests of `flwr
                                           supernode list`, `flwr ls`, `flwr run` and `flwr log
                                           --show`, called in-process: each `flwr` process
                                           costs ~2 s of CPU (4-7 s on a busy box)
"""

from __future__ import annotations

import importlib
import inspect
import time

from shared.errors import UnikdError

FLWR_VERSION = "1.42.0"

# (module, attribute, parameters it must take); parameters None: only the attribute must exist

# used by both sides (shared/platform/flower_pulls.py)
BOTH_SIDES: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("flwr.supercore.inflatable.inflatable_utils", "pull_objects",
     ("initial_backoff", "backoff_cap")),
    ("flwr.supercore.inflatable.inflatable_utils", "pull_and_inflate_object_from_tree",
     ("initial_backoff", "backoff_cap")),
)

# used by the edge (client/node/supernode_internals.py)
SUPERNODE_SIDE: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("flwr.supernode.cli.flower_supernode", "flower_supernode", ()),
    ("flwr.supernode.start_client_internal", "start_client_internal", ("isolation",)),
    ("flwr.supernode.start_client_internal", "time", None),
    ("flwr.supernode.runtime.run_clientapp", "run_clientapp",
     ("runtime_api_address", "token", "insecure", "certificates", "parent_pid",
      "runtime_dependency_install")),
    ("flwr.supernode.runtime.run_clientapp", "pull_task_input", ("client",)),
    ("flwr.supernode.runtime.run_clientapp", "install_from_fab",
     ("fab_file", "install_dir", "skip_prompt")),
    ("flwr.common.config", "get_project_dir", ("fab_id", "fab_version", "fab_hash")),
    ("flwr.common.config", "get_project_config", ("project_dir",)),
    ("flwr.supercore.object_ref", "load_app",
     ("module_attribute_str", "error_type", "project_dir")),
    ("flwr.supernode.runtime.run_clientapp", "push_message", ("client", "message", "context")),
    ("flwr.common.serde", "recorddict_to_proto", ("recorddict",)),
    ("flwr.supercore.runtime", "RuntimeHttpClient", None),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor", ("component_name",)),
    ("flwr.proto.runtime_pb2", "AcquireTaskRequest", None),
    ("flwr.supercore.constant", "TaskType", None),
    ("flwr.common.constant", "ErrorCode", None),
    ("flwr.supercore.exit.signal_handler", "register_signal_handlers", ("exit_message",)),
    ("flwr.supercore.constant", "FORCE_EXIT_TIMEOUT_SECONDS", None),
    ("flwr.supercore.logger", "FLOWER_LOGGER", None),
    ("flwr.supercore.retry.http_retry", "make_simple_http_retry_invoker", ()),
    ("flwr.supernode.fleet_http_connection", "HEARTBEAT_DEFAULT_INTERVAL", None),
    ("flwr.supercore.heartbeat", "HEARTBEAT_DEFAULT_INTERVAL", None),
    ("flwr.common.constant", "HEARTBEAT_MAX_INTERVAL", None),
    ("flwr.common.constant", "HEARTBEAT_MIN_INTERVAL", None),
)

# used by the edge's join check (client/node/fleet_probe.py)
FLEET_PROBE: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("flwr.supernode.fleet_http_client", "FleetHttpClient",
     ("base_url", "interceptors", "verify", "timeout")),
    ("flwr.supernode.node_auth_http_interceptor", "NodeAuthHttpInterceptor",
     ("private_key", "public_key")),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor", ("component_name",)),
    ("flwr.proto.fleet_pb2", "ActivateNodeRequest", None),
    ("flwr.proto.fleet_pb2", "DeactivateNodeRequest", None),
    ("flwr.supercore.primitives.asymmetric", "public_key_to_bytes", ("public_key",)),
    ("flwr.common.constant", "HEARTBEAT_MIN_INTERVAL", None),
    ("flwr.supercore.error", "FlowerError", ("code", "message", "public_details")),
    ("flwr.supercore.error", "ApiErrorCode", None),
)

# used by the cloud and the operator (server/deploy/control_internals.py)
CONTROL_SIDE: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("flwr.cli.build", "build_fab_from_disk", ("app",)),
    ("flwr.cli.utils", "init_http_client_from_connection", ("connection",)),
    ("flwr.cli.typing", "SuperLinkConnection",
     ("name", "address", "root_certificates", "insecure")),
    ("flwr.proto.control_pb2", "ListNodesRequest", None),
    ("flwr.common.constant", "HEARTBEAT_PATIENCE", None),
    ("flwr.proto.control_pb2", "ListRunsRequest", None),
    ("flwr.proto.control_pb2", "StartRunRequest", None),
    ("flwr.proto.control_pb2", "StreamLogsRequest", None),
    ("flwr.proto.control_pb2", "RegisterNodeRequest", None),
    ("flwr.supercore.primitives.asymmetric", "public_key_to_bytes", ("public_key",)),
    ("flwr.supercore.primitives.asymmetric", "uses_nist_ec_curve", ("public_key",)),
    ("flwr.supercore.fab", "Fab", ("hash_str", "content", "verifications")),
    ("flwr.common.serde", "fab_to_proto", ("fab",)),
    ("flwr.common.serde", "user_config_to_proto", ("user_config",)),
)

REQUIRED = BOTH_SIDES + SUPERNODE_SIDE + FLEET_PROBE + CONTROL_SIDE

# (module, function, source text it must contain): behaviour no signature shows
REQUIRED_SOURCE: tuple[tuple[str, str, str], ...] = (
    # the first SIGTERM/SIGINT puts the previous handlers back, then exits gracefully
    ("flwr.supercore.exit.signal_handler", "register_signal_handlers",
     "signal.signal(sig, default_handlers[sig])"),
    # a ClientApp module already imported (by the bundle's warm process) is used, not re-imported
    ("flwr.supercore.object_ref", "load_app", "if module_str not in sys.modules:"),
    # a retried call's cause is logged at DEBUG with this text (the launcher shows it)
    ("flwr.supercore.retry.http_retry", "make_simple_http_retry_invoker",
     '"Connection attempt failed with exception: %s"'),
    # the join check's calls are the Fleet routes the cloud's proxy forwards (/v1/fleet/*)
    ("flwr.supernode.fleet_http_client", "FleetHttpClient", 'path="/v1/fleet/activate-node"'),
    ("flwr.supernode.fleet_http_client", "FleetHttpClient", 'path="/v1/fleet/deactivate-node"'),
    # the node's heartbeat interval is these modules' constant (supernode_internals.py)
    ("flwr.supercore.heartbeat", "HeartbeatSender", "HEARTBEAT_DEFAULT_INTERVAL"),
)


class FlowerChanged(UnikdError):
    """The installed flwr is not the one our internals use was written for."""


class TimeStandIn:
    """Base of what a side puts in place of a Flower module's `time` (the SuperNode's
    ShortSleeps): `check()` accepts one there, and otherwise only the time module itself."""


def check(required: tuple[tuple[str, str, tuple[str, ...] | None], ...] = REQUIRED) -> None:
    """Fail loudly unless flwr is 1.42.0 with every attribute and parameter we use. A caller
    that uses one side's internals only may check just those (`required`, e.g. FLEET_PROBE):
    the whole table imports Flower's cloud-side modules too, a second or more on a device."""
    import flwr

    version = getattr(flwr, "__version__", "?")
    problems = [] if version == FLWR_VERSION else [f"flwr {version} is installed, not "
                                                    f"{FLWR_VERSION}"]
    for module, attr, params in required:
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            problems.append(f"{module}.{attr}: {err}")
            continue
        if params:
            have = inspect.signature(obj).parameters
            missing = [p for p in params if p not in have]
            if missing:
                problems.append(f"{module}.{attr} no longer takes {', '.join(missing)}")
    modules = {(module, attr) for module, attr, _ in required}
    for module, attr, text in REQUIRED_SOURCE:
        if (module, attr) not in modules:
            continue
        try:
            source = inspect.getsource(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError, OSError, TypeError) as err:
            problems.append(f"{module}.{attr}: {err}")
            continue
        if text not in source:
            problems.append(f"{module}.{attr} no longer does `{text}`")
    if not problems and ("flwr.supernode.start_client_internal", "time") in modules:
        import flwr.supernode.start_client_internal as sci

        if sci.time is not time and not isinstance(sci.time, TimeStandIn):
            problems.append("flwr.supernode.start_client_internal.time is not the time module")
    if problems:
        raise FlowerChanged("FedUNI-KD's edge executor, node launcher, app signing and "
                            "Control API status calls use "
                            f"flwr {FLWR_VERSION} internals (shared/platform/flower_pins.py); "
                            + "; ".join(problems)
                            + ". Re-check them as README 'Upgrading flwr' lists, or install "
                            f"flwr=={FLWR_VERSION}.")
