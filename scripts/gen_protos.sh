#!/usr/bin/env bash
# Regenerate the Python gRPC/protobuf stubs from proto/ into serving/grpc_stubs/.
#
#   scripts/gen_protos.sh                     # writes serving/grpc_stubs/
#   OUT_DIR=/tmp/x scripts/gen_protos.sh      # writes elsewhere (used by the "stubs current" test)
#   PYTHON=/path/to/python scripts/gen_protos.sh
#
# protoc emits absolute imports that follow the .proto paths (e.g.
# `from org.pytorch.serve.grpc.inference import inference_pb2`). They are rewritten to
# `from serving.grpc_stubs.<same path> import ...` so the stubs import as a normal
# subpackage, without touching sys.path. Only modules generated from proto/ are
# rewritten; google.protobuf imports stay as they are. The output is deterministic:
# the whole generated tree is rebuilt on every run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${OUT_DIR:-serving/grpc_stubs}"
PROTO_DIR="proto"
PY_PACKAGE="serving.grpc_stubs"   # import path of OUT_DIR in the committed tree

export LC_ALL=C

# All .proto files, relative to proto/, in a fixed order.
PROTOS=()
while IFS= read -r f; do PROTOS+=("$f"); done < <(cd "$PROTO_DIR" && find . -name '*.proto' -type f | sed 's|^\./||' | sort)
if [ "${#PROTOS[@]}" -eq 0 ]; then
    echo "gen_protos: no .proto files under $PROTO_DIR" >&2
    exit 1
fi

# Remove the previously generated tree (the top-level directories of proto/ and the
# package __init__.py); nothing else in OUT_DIR is touched.
mkdir -p "$OUT_DIR"
for top in $(printf '%s\n' "${PROTOS[@]}" | cut -d/ -f1 | sort -u); do
    rm -rf "${OUT_DIR:?}/$top"
done
rm -f "$OUT_DIR/__init__.py"

"$PYTHON" -m grpc_tools.protoc \
    -I"$PROTO_DIR" \
    --python_out="$OUT_DIR" \
    --grpc_python_out="$OUT_DIR" \
    --pyi_out="$OUT_DIR" \
    "${PROTOS[@]}"

# Rewrite imports of modules generated here: `from a.b import c_pb2` -> `from PKG.a.b import c_pb2`.
SED_ARGS=()
for p in "${PROTOS[@]}"; do
    pkg="$(dirname "$p" | tr / .)"
    mod="$(basename "$p" .proto)_pb2"
    pkg_re="${pkg//./\\.}"
    SED_ARGS+=(-e "s/^from ${pkg_re} import ${mod}( |\$)/from ${PY_PACKAGE}.${pkg} import ${mod}\\1/")
done
while IFS= read -r f; do
    sed -E "${SED_ARGS[@]}" "$f" > "$f.gen" && mv "$f.gen" "$f"
done < <(find "$OUT_DIR" \( -name '*_pb2.py' -o -name '*_pb2_grpc.py' -o -name '*_pb2.pyi' \) -type f | sort)

# Empty __init__.py in every generated package directory.
for p in "${PROTOS[@]}"; do
    d="$(dirname "$p")"
    while [ "$d" != "." ]; do
        : > "$OUT_DIR/$d/__init__.py"
        d="$(dirname "$d")"
    done
done

# Package entry point with short names.
cat > "$OUT_DIR/__init__.py" <<'PY'
"""Generated protobuf/gRPC stubs (scripts/gen_protos.sh; do not edit by hand).

The wire names are unchanged (e.g. org.pytorch.serve.grpc.inference.InferenceAPIsService);
only the Python import path is serving.grpc_stubs.<proto path>.
"""

from serving.grpc_stubs.org.pytorch.serve.grpc.inference import (
    inference_pb2,
    inference_pb2_grpc,
)
from serving.grpc_stubs.org.pytorch.serve.grpc.management import (
    management_pb2,
    management_pb2_grpc,
)
from serving.grpc_stubs.trustgc.v1 import result_pb2

__all__ = [
    "inference_pb2",
    "inference_pb2_grpc",
    "management_pb2",
    "management_pb2_grpc",
    "result_pb2",
]
PY

echo "gen_protos: ${#PROTOS[@]} .proto files -> $OUT_DIR"
