"""A no-op TorchServe handler: the runtime's own floor for benchmarks/serve_load.py.

Packed into an archive with the production model config (same workers, batch size and delay),
it answers every request of a batch with the same small JSON without reading the image or
running a model, so its throughput is what TorchServe's frontend, queue and worker protocol
allow on this machine.  The KServe runtime's floor is ``KServeSettings(noop=True)``.
"""

ANSWER = b'{"noop": true}'


def handle(data, context):  # noqa: ARG001 - TorchServe's entry point
    if data is None:  # the initialisation call
        return None
    return [ANSWER] * len(data)
