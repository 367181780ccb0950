"""``adctl retrain``, ``push-model`` and ``models``: train, store and switch models."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from control.cli_env import (
    DEFAULT_STORE,
    CliError,
    add_field_options,
    bootstrap_of,
    json_obj,
    opt,
    parse_time_arg,
    split_list,
)
from control.commands.batch import add_engine_options
from control.progress import Progress, say


def _announce(args: argparse.Namespace) -> Any:
    from control.ops import Announce

    return Announce(bootstrap_of(args), args.control_topic) if args.announce else None


def cmd_retrain(args: argparse.Namespace) -> int:
    """``adctl retrain``: fit a model on history and store a new version."""
    from control import ops
    from control.commands.batch import train_with_engine
    from control.history import Fields
    from control.history_columns import default_tenant_of

    if args.push and not args.input:
        raise CliError("--push needs the flow's input (--input or AD_SOURCE)")
    result = ops.retrain(
        split_list(args.source or os.environ.get("AD_SOURCE")),
        store=args.model_store,
        detector=args.detector,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since=parse_time_arg(args.since),
        until=parse_time_arg(args.until),
        params=args.params,
        version=args.version,
        scheduler=args.scheduler,
        dask_workers=args.dask_workers,
        fit=args.fit,
        gpu=args.gpu,
        progress=Progress(args.progress, "training"),
        train=lambda series, progress: train_with_engine(args, series, progress),
        push_input=args.input if args.push else None,
        announce=_announce(args),
        log=say,
        default_tenant=default_tenant_of(
            os.environ.get("AD_DEFAULT_TENANT", ""), os.environ.get("AD_TENANTS", "")
        )
        or None,
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_push_model(args: argparse.Namespace) -> int:
    """``adctl push-model``: announce a stored model version to the running flow."""
    from control import ops

    result = ops.push_model(
        args.model_store, args.detector, args.version, args.input, _announce(args), log=say
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_tenants_push(args: argparse.Namespace) -> int:
    """``adctl tenants push``: switch the running flow to a tenant registry."""
    from control import ops

    result = ops.push_registry(args.model_store, args.registry, args.input, log=say)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``adctl models``: list the stored versions of a detector's model."""
    from control import ops

    for m in ops.list_models(args.model_store, args.detector):
        print(f"{m['version']}\t{m['model_ref']}")
    return 0


def _common_store(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--model-store",
        env="AD_MODEL_STORE",
        default=DEFAULT_STORE,
        help="model store URL: redis://host:port[/prefix], file:///dir or s3://bucket/prefix",
    )
    opt(
        p,
        "--detector",
        env="AD_DETECTOR",
        help="detector name",
    )


def _common_publish(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--input",
        env="AD_SOURCE",
        help="the flow's input URL to write the model-switch "
        "marker into (kafka://, redis://, kinesis://, file://)",
    )
    opt(
        p,
        "--control-topic",
        env="AD_CONTROL_TOPIC",
        help="Kafka topic for audit announcements",
    )
    opt(
        p,
        "--bootstrap",
        env="AD_CONTROL_BOOTSTRAP",
        help="Kafka bootstrap for announcements (default: from a kafka:// --input)",
    )
    opt(
        p,
        "--announce",
        env="AD_ANNOUNCE",
        default=True,
        flag=True,
        help="announce on the control topic",
    )


def register(sub: Any) -> None:
    """Add this module's subcommands to ``adctl``'s subparsers ``sub``."""
    p = sub.add_parser(
        "retrain",
        help="train per-key models on Dask, Ray or Spark and store a new version",
        description="Read history, fit one model per key on Dask (or --engine ray|spark), store a "
        "versioned artifact, announce it, and optionally push it live.",
    )
    opt(
        p,
        "--from",
        dest="source",
        env="AD_HISTORY",
        action="append",
        help="history: kafka://host:port/topic or Parquet/CSV/JSON-lines files (repeat; "
        "defaults to AD_SOURCE)",
    )
    add_field_options(p)
    _common_store(p)
    opt(
        p,
        "--params",
        env="AD_DETECTOR_PARAMS",
        default={},
        type=json_obj,
        help="detector parameters as a JSON object",
    )
    opt(p, "--version", env="AD_MODEL_VERSION", help="version name (default: next vN)")
    opt(
        p,
        "--scheduler",
        env="AD_DASK_SCHEDULER",
        help="Dask scheduler address tcp://host:8786 (default: an embedded LocalCluster)",
    )
    opt(
        p,
        "--dask-workers",
        env="AD_DASK_WORKERS",
        default=2,
        type=int,
        help="workers of the embedded engine (LocalCluster processes, Ray/Spark cores)",
    )
    add_engine_options(p, dask_flags=False)  # issue 15: --engine, --address, --master
    opt(
        p,
        "--fit",
        env="AD_FIT_FUNCTION",
        help="custom fit function package.module:function (default: detectors.fit)",
    )
    opt(
        p,
        "--gpu",
        env="AD_GPU",
        default=False,
        flag=True,
        help="run the numeric work on CuPy (needs a CUDA GPU)",
    )
    opt(
        p,
        "--push",
        env="AD_PUSH",
        default=False,
        flag=True,
        help="also switch the running flow to the new version (writes input markers)",
    )
    opt(
        p,
        "--progress",
        env="AD_PROGRESS",
        default="auto",
        choices=["auto", "bar", "plain", "none"],
        help="progress display",
    )
    _common_publish(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "push-model",
        help="switch the running flow to a stored model version",
        description="Write a model-switch marker into every partition of the "
        "flow's input; the flow applies it at that input position.",
    )
    _common_store(p)
    opt(
        p,
        "--version",
        env="AD_MODEL_VERSION",
        default="latest",
        help="version to switch to ('latest' for the newest)",
    )
    _common_publish(p)
    p.set_defaults(func=cmd_push_model)

    p = sub.add_parser(
        "tenants",
        help="tenant registry operations",
        description="Operate on the flow's tenant registry.",
    )
    tsub = p.add_subparsers(dest="tenants_cmd", required=True)
    p = tsub.add_parser(
        "push",
        help="switch the running flow to a tenant registry",
        description="Store the registry in the model store and write a signed "
        "registry-switch marker into every partition of the flow's input; the flow "
        "applies it (tenants, thresholds, quotas) from that input position on.",
    )
    opt(
        p,
        "--model-store",
        env="AD_MODEL_STORE",
        default=DEFAULT_STORE,
        help="model store URL (the flow's AD_MODEL_STORE)",
    )
    opt(p, "--registry", env="AD_TENANTS", help="the registry file (YAML) to push")
    opt(
        p,
        "--input",
        env="AD_SOURCE",
        help="the flow's input URL to write the marker into (kafka://, redis://, "
        "kinesis://, file://)",
    )
    p.set_defaults(func=cmd_tenants_push)

    p = sub.add_parser("models", help="list stored model versions")
    _common_store(p)
    p.set_defaults(func=cmd_models)
