"""Wire schemas for sensor readings: Avro (``*.avsc``) and Protobuf (``*.proto``).

``AVRO_IDS`` maps the Confluent wire-format schema id to a schema file here, for
deployments without a schema registry; with one, set ``AD_SCHEMA_REGISTRY``.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
AVRO_IDS = {1: "sensor_reading_v1.avsc", 2: "sensor_reading_v2.avsc"}
DEFAULT_AVRO = "sensor_reading_v2.avsc"
DEFAULT_PROTO = "sensor_reading_v2.proto"
