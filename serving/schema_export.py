"""Write the JSON Schemas of the response and error bodies (``make schema``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from serving.schema import ClassificationResponse, ErrorResponse


def schema_document() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "trustgc classification API, schema version 1",
        "oneOf": [{"$ref": "#/$defs/ClassificationResponse"}, {"$ref": "#/$defs/ErrorResponse"}],
        "$defs": {
            "ClassificationResponse": ClassificationResponse.model_json_schema(),
            "ErrorResponse": ErrorResponse.model_json_schema(),
        },
    }


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "docs/response.schema.json")
    target.write_text(json.dumps(schema_document(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
