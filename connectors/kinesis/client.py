"""The Kinesis client the source and sink share: no hidden retries, shard listing, limits."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from connectors.base import (
    SourceURL,
)

log = logging.getLogger(__name__)


MAX_RECORDS_PER_PUT = 500


MAX_BYTES_PER_PUT = 5 * 1024 * 1024


MAX_BYTES_PER_RECORD = 1024 * 1024


ID_FIELDS = ("alert_id", "dlq_id", "id")


_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
    "ThrottlingException",
    "InternalFailure",
    "ServiceUnavailable",
}


_CONNECTION_ERRORS = (
    bexc.EndpointConnectionError,
    bexc.ConnectionClosedError,
    bexc.ReadTimeoutError,
    bexc.ConnectTimeoutError,
)


def make_client(endpoint: str | None, region: str) -> Any:
    """A Kinesis client without hidden retries (callers back off themselves)."""
    cfg = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=1,
        read_timeout=2,
    )
    kwargs: dict[str, Any] = {"region_name": region, "config": cfg}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if boto3.Session().get_credentials() is None:
            # Local endpoints (kinesalite, LocalStack) accept any credentials.
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106 - placeholder that local emulators accept
    return boto3.client("kinesis", **kwargs)


def list_shards(client: Any, stream: str) -> list[dict]:
    """Every shard of ``stream`` still within retention, closed ones included."""
    shards: list[dict] = []
    resp = client.list_shards(StreamName=stream)
    shards.extend(resp["Shards"])
    while resp.get("NextToken"):
        resp = client.list_shards(NextToken=resp["NextToken"])
        shards.extend(resp["Shards"])
    return shards


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _stream_name(url: SourceURL) -> str:
    names = url.names
    if len(names) != 1:
        raise ValueError(
            f"a kinesis URL names one stream: {url.raw!r}; e.g. kinesis://sensors?region=us-east-1"
        )
    return names[0]


def iterator_since(client: Any, stream: str, shard: str, since: float) -> tuple[str, float]:
    """An iterator at ``since``; returns (iterator, arrival time to filter from).

    kinesalite never answers ``AT_TIMESTAMP`` when no record is that recent (the request
    times out); then read from ``TRIM_HORIZON`` and filter by arrival time instead.
    """
    args = {"StreamName": stream, "ShardId": shard}
    try:
        it = client.get_shard_iterator(
            ShardIteratorType="AT_TIMESTAMP", Timestamp=datetime.fromtimestamp(since, UTC), **args
        )
        return str(it["ShardIterator"]), 0.0
    except (bexc.ReadTimeoutError, bexc.ClientError) as exc:
        if isinstance(exc, bexc.ClientError) and _code(exc) != "InvalidArgumentException":
            raise
    it = client.get_shard_iterator(ShardIteratorType="TRIM_HORIZON", **args)
    return str(it["ShardIterator"]), since
