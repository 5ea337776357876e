"""The handler file packed into the .mar: a shim that imports the installed trustgc package.

The archive carries data (weights, config, calibration), not a copy of the code: the worker
runs whatever ``serving`` version is installed next to TorchServe.
"""

from serving.handler import handle  # noqa: F401
