"""``adctl retrain``, ``push-model`` and ``models``: train, store and switch models."""

from __future__ import annotations

import argparse
import json
import os
import time
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
    strip_query,
)
from control.commands.batch import add_engine_options
from control.progress import Progress, say


def _publish(
    args: argparse.Namespace, detector: str, version: str, ref: str, push: bool
) -> dict[str, Any]:
    from control.markers import announce, encode_marker, push_marker

    result: dict[str, Any] = {"detector": detector, "version": version, "model_ref": ref}
    if push:
        if not args.input:
            raise CliError("--push needs the flow's input (--input or AD_SOURCE)")
        written = push_marker(args.input, encode_marker(detector, version, ref))
        result["markers"] = {w.partition: w.position for w in written}
        say(
            f"model switch to {version} written into {len(written)} input partition(s) "
            f"of {strip_query(args.input)}"
        )
    if args.announce:
        bootstrap = bootstrap_of(args)
        if bootstrap is None:
            say("not announcing: no Kafka bootstrap (--bootstrap or a kafka:// AD_SOURCE)")
        else:
            announce(
                bootstrap,
                args.control_topic,
                {"type": "model", "event": "pushed" if push else "trained", **result},
            )
            result["announced"] = f"{bootstrap}/{args.control_topic}"
    return result


def cmd_retrain(args: argparse.Namespace) -> int:
    """``adctl retrain``: fit a model on history and store a new version."""
    from control.commands.batch import train_with_engine
    from control.history import Fields, ReadStats, load_series
    from control.training import assemble_model
    from state import model_store

    sources = [strip_query(s) for s in split_list(args.source or os.environ.get("AD_SOURCE"))]
    if not sources:
        raise CliError(
            "no history given: --from kafka://host:port/topic or files "
            "(or set AD_HISTORY / AD_SOURCE)"
        )
    since, until = parse_time_arg(args.since), parse_time_arg(args.until)
    stats = ReadStats()
    t0 = time.monotonic()
    say(f"reading history from {', '.join(sources)}")
    series = load_series(
        sources,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since=since,
        until=until,
        stats=stats,
        on_progress=lambda n: say(f"read {n:,} records"),
    )
    points = sum(len(s.values) for s in series.values())
    say(
        f"read {stats.records:,} records: {len(series)} keys, {points:,} points, "
        f"{stats.bad_records} bad, {stats.skipped_markers} control markers skipped "
        f"({time.monotonic() - t0:.1f}s)"
    )
    # issue 15: train on --engine (dask, ray or spark)
    per_key, where = train_with_engine(args, series, Progress(args.progress, "training"))
    version = args.version or model_store.next_version(args.model_store, args.detector)
    training = {
        "sources": sources,
        "since": since,
        "until": until,
        "records": stats.records,
        "keys": len(series),
        "points": points,
        "params": args.params,
    }
    model = assemble_model(args.detector, version, per_key, training)
    ref = model_store.put(
        args.model_store,
        args.detector,
        version,
        model,
        meta={"trained_at": time.time(), "scheduler": where},
    )
    say(f"stored {args.detector} {version} at {ref}")
    result = _publish(args, args.detector, version, ref, args.push)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_push_model(args: argparse.Namespace) -> int:
    """``adctl push-model``: announce a stored model version to the running flow."""
    from state import model_store

    version = args.version
    if version in (None, "", "latest"):
        version = model_store.latest(args.model_store, args.detector)
        if version is None:
            raise CliError(f"no versions of {args.detector!r} in {args.model_store}")
    ref = model_store.model_ref(args.model_store, args.detector, version)
    model_store.fetch(ref)  # the flow will fetch it: make sure it exists and is intact
    result = _publish(args, args.detector, version, ref, push=True)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``adctl models``: list the stored versions of a detector's model."""
    from state import model_store

    for v in model_store.list_versions(args.model_store, args.detector):
        print(f"{v}\t{model_store.model_ref(args.model_store, args.detector, v)}")
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

    p = sub.add_parser("models", help="list stored model versions")
    _common_store(p)
    p.set_defaults(func=cmd_models)
