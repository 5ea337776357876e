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
