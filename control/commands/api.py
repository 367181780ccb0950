"""``adctl serve`` (the HTTP control API), ``adctl keys`` (service-account API keys) and
``adctl audit verify`` (check the audit log's hash chain).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from control.cli_env import CliError, opt, split_list
from control.progress import say


def _keys_file(args: argparse.Namespace) -> Path:
    if not args.keys_file:
        return Path(args.state_dir) / "api-keys.json"
    return Path(args.keys_file)


def _config(args: argparse.Namespace) -> Any:
    from control.api.auth import JwtConfig
    from control.api.config import ApiConfig
    from state.tenants import load_registry

    state = Path(args.state_dir)
    if args.registry:
        load_registry(args.registry, missing_ok=True)  # a bad one stops the start (exit 2)
    for flag, path in (("--jwks", args.jwks), ("--jwt-key", args.jwt_key)):
        if path and "://" not in path and not Path(path).is_file():
            raise CliError(f"{flag} {path!r}: no such file (e.g. {flag} /etc/ad/jwks.json)")
    return ApiConfig(
        flows_dir=Path(args.flows_dir) if args.flows_dir else state / "flows",
        audit_log=Path(args.audit_log) if args.audit_log else state / "audit.jsonl",
        registry=args.registry or None,
        model_store=args.model_store or None,
        keys_file=_keys_file(args),
        jwt=JwtConfig(
            jwks=args.jwks or None,
            key_file=args.jwt_key or None,
            issuer=args.jwt_issuer or None,
            audience=args.jwt_audience or None,
        ),
        module=args.module,
        allow_urls=tuple(split_list(args.allow_url)),
        alerts=args.alerts or None,
        control_topic=args.control_topic,
        dask_scheduler=args.scheduler or None,
        dask_workers=args.dask_workers,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """``adctl serve``: run the HTTP control API until interrupted."""
    import uvicorn

    from control.api.app import create_app

    try:
        app = create_app(_config(args))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot start the API: {exc}") from None
    say(f"serving the control API on http://{args.host}:{args.port} (OpenAPI: /openapi.json)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    """``adctl keys create``: store a key's hash, print the key once."""
    from control.api.keys import KeyStore

    key, secret = KeyStore(_keys_file(args)).create(args.role, args.tenant, args.name)
    say(f"created {key.role} key {key.id} for {', '.join(key.tenants)}; it is shown only now")
    print(secret)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    """``adctl keys list``: one JSON line per key (no secrets)."""
    from control.api.keys import KeyStore

    for key in KeyStore(_keys_file(args)).list():
        print(json.dumps(key.public(), sort_keys=True))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """``adctl keys revoke``: remove a key."""
    from control.api.keys import KeyStore

    if not KeyStore(_keys_file(args)).revoke(args.id):
        raise CliError(f"no key {args.id!r} in {_keys_file(args)} (see adctl keys list)")
    say(f"revoked key {args.id}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """``adctl audit verify``: check the chain; exit 1 at the first bad line."""
    from control.api.audit import verify

    path = Path(args.audit_log) if args.audit_log else Path(args.state_dir) / "audit.jsonl"
    if not path.is_file():
        raise CliError(f"audit log {str(path)!r} does not exist (e.g. --audit-log audit.jsonl)")
    v = verify(path)
    if not v.ok:
        print(f"{path}:{v.bad_line}: tampered: {v.reason}")
        return 1
    print(f"{path}: {v.lines} line(s), chain intact; head {v.head}")
    return 0


def _keys_opt(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--keys-file",
        env="AD_API_KEYS_FILE",
        help="API key hashes (default STATE_DIR/api-keys.json)",
    )


def _audit_opt(p: argparse.ArgumentParser) -> None:
    opt(p, "--audit-log", env="AD_AUDIT_LOG", help="audit log (default STATE_DIR/audit.jsonl)")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``adctl``'s subparsers ``sub``."""
    from control.cli_env import DEFAULT_STORE

    p = sub.add_parser(
        "serve",
        help="serve the HTTP control API (FastAPI; OpenAPI at /openapi.json)",
        description="Flows, models, tenants, keys and alerts over HTTP, with bearer "
        "tokens (JWT or API key), per-tenant roles and a hash-chained audit log.",
    )
    opt(p, "--host", env="AD_API_HOST", default="127.0.0.1", help="address to listen on")
    opt(p, "--port", env="AD_API_PORT", default=8080, type=int, help="port to listen on")
    opt(
        p, "--flows-dir", env="AD_API_FLOWS_DIR", help="flows' state dirs (default STATE_DIR/flows)"
    )
    opt(p, "--registry", env="AD_TENANTS", help="tenant registry YAML file")
    opt(
        p,
        "--model-store",
        env="AD_MODEL_STORE",
        default=DEFAULT_STORE,
        help="model store URL (each tenant gets /<tenant> under it)",
    )
    opt(p, "--jwks", env="AD_API_JWKS", help="JWKS of the token issuer: a file or an https:// URL")
    opt(
        p,
        "--jwt-key",
        env="AD_API_JWT_KEY",
        help="JWT key file: a PEM public key or an HS256 secret",
    )
    opt(p, "--jwt-issuer", env="AD_API_JWT_ISSUER", help="required iss claim")
    opt(p, "--jwt-audience", env="AD_API_JWT_AUDIENCE", help="required aud claim")
    _keys_opt(p)
    _audit_opt(p)
    opt(p, "--module", env="AD_FLOW_MODULE", default="flows.detector", help="flow module that runs")
    opt(
        p,
        "--allow-url",
        env="AD_API_ALLOW_URLS",
        action="append",
        help="URL prefix callers may use for AD_SOURCE/AD_SINK/AD_DLQ and tenant sinks (repeat)",
    )
    opt(p, "--alerts", env="AD_SINK", help="alert sink read for tenants without their own")
    opt(
        p,
        "--control-topic",
        env="AD_CONTROL_TOPIC",
        help="Kafka topic for model announcements",
    )
    opt(
        p,
        "--scheduler",
        env="AD_DASK_SCHEDULER",
        help="Dask scheduler for retraining (default: a LocalCluster)",
    )
    opt(
        p, "--dask-workers", env="AD_DASK_WORKERS", default=1, type=int, help="LocalCluster workers"
    )
    opt(
        p,
        "--log-level",
        env="AD_API_LOG_LEVEL",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="API keys of service accounts (stored as hashes)")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ks.required = True
    c = ks.add_parser("create", help="create a key and print it (only this once)")
    c.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    c.add_argument("--tenant", action="append", required=True, help="tenant id or '*' (repeat)")
    c.add_argument("--name", default="", help="what the key is for")
    _keys_opt(c)
    c.set_defaults(func=cmd_keys_create)
    c = ks.add_parser("list", help="list keys (no secrets)")
    _keys_opt(c)
    c.set_defaults(func=cmd_keys_list)
    c = ks.add_parser("revoke", help="revoke a key by id")
    c.add_argument("id")
    _keys_opt(c)
    c.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("audit", help="the API's audit log")
    au = p.add_subparsers(dest="audit_command", metavar="ACTION")
    au.required = True
    c = au.add_parser("verify", help="check the hash chain (exit 1 at the first bad line)")
    _audit_opt(c)
    c.set_defaults(func=cmd_audit_verify)
