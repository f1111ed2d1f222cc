"""The JSON Schemas and the Avro schema of the product (config, profile update, export record)."""
import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_schema(name: str) -> dict:
    """``config.schema.json``, ``profile_update.schema.json``, ``export_record.schema.json``
    or ``profile_update.avsc``, parsed."""
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return json.load(f)
