"""atheris harness: coverage-guided fuzzing of serving.decode.decode_image.

    .venv/bin/python tests/reliability/atheris_decode.py -runs=20000 CORPUS_DIR

Run by tests/reliability/test_fuzz.py::test_atheris_decode_campaign (slow, optional: only when
``atheris`` is installed).  Any exception other than ``InputError`` stops the campaign with a
crash file; libFuzzer prints ``Done N runs`` when it finishes cleanly.
"""

from __future__ import annotations

import sys
import warnings

import atheris

with atheris.instrument_imports():
    from PIL import Image  # noqa: F401  (instrumented: Pillow's Python-level parsers)

    from serving.decode import DecodeLimits, decode_image
    from serving.errors import InputError

LIMITS = DecodeLimits()


def test_one_input(data: bytes) -> None:
    channels = 3 if data[:1] == b"\x00" else 1
    try:
        out = decode_image(data, 28, 28, channels, LIMITS)
    except InputError:
        return
    if out.shape != (channels, 28, 28) or out.dtype.name != "uint8":
        raise AssertionError(f"bad output {out.shape} {out.dtype}")


def main() -> None:
    warnings.simplefilter("ignore")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
