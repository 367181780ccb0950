"""Amazon Kinesis Data Streams source and sink (boto3).

Source URL: ``kinesis://stream?endpoint=http://127.0.0.1:4567&region=us-east-1
&start=TRIM_HORIZON|LATEST|AT_TIMESTAMP&at=2024-01-01T00:00:00Z&tail=false&batch=1000&poll=200ms``
Sink URL:   ``kinesis://stream?endpoint=...&region=...&partitions=1``

Source
    One Bytewax partition per shard, for every shard that ``ListShards`` returns when the
    flow starts, closed ones included (they are drained first). Resume state per shard is
    ``{"seq": <last sequence number emitted or None>, "at": <epoch seconds or None>,
    "done": <bool>}``; reading resumes with ``AFTER_SEQUENCE_NUMBER``. ``at`` pins where a
    shard that emitted nothing yet starts: ``LATEST`` means ``AT_TIMESTAMP`` of the time
    the partition was first built (local clock), so a restart does not skip what arrived
    meanwhile (unless the flow died before its first snapshot, which stores nothing).
    ``done`` marks a closed shard read to its end.

    Resharding: a child shard does not read until its parent shards are drained. Partitions
    tell each other through a per-process registry, so the order parent-before-child holds
    when parent and child are built in the same process (single-process runs, any ``-w``).
    If a parent is not built in this process, the child waits ``parent_wait`` (default 30s)
    after the parent shard is closed and then reads anyway: no data is lost, but records of
    a sensor may then be emitted out of order across the reshard. Shards created *after*
    the flow started are not partitions of this execution (Bytewax's partition list is
    fixed): the flow reads them after its next restart, from ``TRIM_HORIZON`` if their
    parent is done (a warning is logged when a drained shard has unknown children).

    ``next_batch`` never waits: each call makes at most one ``GetShardIterator`` and one
    ``GetRecords`` request (boto3 with no client retries, 1s connect / 2s read timeout).
    Empty reads, throttling (``ProvisionedThroughputExceededException``,
    ``LimitExceededException``) and connection errors back off through ``next_awake``;
    an expired iterator is re-created from the last sequence number. kinesalite never
    answers an ``AT_TIMESTAMP`` request when no record is that recent; after that one
    timeout the shard is read from ``TRIM_HORIZON`` with records older than the
    timestamp dropped (same result, used only when ``AT_TIMESTAMP`` fails).

Sink
    ``PutRecords`` in chunks of at most 500 records and 5 MiB; only the entries that failed
    are retried (with backoff); partition key = the record's key (sensor id). Resume state
    ``{"seqs": {shard: highest sequence number seen}, "ts": epoch seconds, "skip": [ids]}``.
    After a resume the partition reads every shard from those sequence numbers (shards
    without one: from ``ts - 60s`` by ``AT_TIMESTAMP``) to the tail and collects the ids of
    records already there (``alert_id``/``dlq_id``/``id`` field of the JSON value); replayed
    records with those ids are not written again.
"""

from connectors.kinesis.client import list_shards, make_client
from connectors.kinesis.sink import KinesisSink, ids_in, read_back, sink_from_url
from connectors.kinesis.source import KinesisSource, source_from_url

__all__ = [
    "KinesisSink",
    "KinesisSource",
    "ids_in",
    "list_shards",
    "make_client",
    "read_back",
    "sink_from_url",
    "source_from_url",
]
