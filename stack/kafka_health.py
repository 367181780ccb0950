"""Kafka health check: a metadata request and a committed transactional produce."""

import sys
import uuid

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

brokers = sys.argv[1]
try:
    md = AdminClient({"bootstrap.servers": brokers, "log_level": 0}).list_topics(timeout=3)
    if not md.brokers:
        sys.exit(1)
    p = Producer(
        {
            "bootstrap.servers": brokers,
            "transactional.id": f"health-{uuid.uuid4()}",
            "transaction.timeout.ms": 10000,
            "log_level": 0,
        }
    )
    p.init_transactions(10)
    p.begin_transaction()
    p.produce("_ad_health", b"ok")
    p.commit_transaction(10)
except KafkaException as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
