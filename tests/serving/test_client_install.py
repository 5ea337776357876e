"""The client SDK installs alone: ``pip install 'trustgc[client]'`` into a fresh virtualenv
brings no torch, no TorchServe and no safetensors, and the client, the response schema and its
protobuf codec import and work there.

Builds a real venv from PyPI (about 40 s on 2 busy cores; needs the package index, as
``make setup`` does).  The sources are copied first, so the build never writes into the
checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "trustgc", "trustgc_cli", "training", "serving")
ABSENT = ("torch", "ts", "safetensors", "PIL", "onnxruntime")

CHECK = """
import importlib.util, json, sys
import serving.client, serving.schema, serving.proto_codec
from serving.schema import ErrorResponse
from serving.proto_codec import to_protobuf
error = ErrorResponse.model_validate({"error": {"code": "undecodable_image", "message": "x"}})
assert to_protobuf(error), "the codec encodes an answer"
print(json.dumps({
    "absent": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None],
    "loaded": sorted(m for m in sys.argv[1:] if m in sys.modules),
}))
"""


def test_client_extra_installs_and_imports_without_torch(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + [f"{source}[client]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-4000:]

    checked = subprocess.run(
        [str(python), "-c", CHECK, *ABSENT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the checkout: only the installed copy can be imported
    )
    assert checked.returncode == 0, checked.stderr
    result = json.loads(checked.stdout)
    assert result == {"absent": list(ABSENT), "loaded": []}

    help_text = subprocess.run(
        [str(venv / "bin" / "trustgc"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "classify" in help_text.stdout
