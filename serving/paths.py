"""Where the deployment files live: one documented default instead of paths built from
``__file__`` in every module.

The project directory holds ``deploy/torchserve/`` (TorchServe's config, metrics and model
config), ``model_store/`` and the run directory ``.run/``.  It is, in this order:

1. ``$TRUSTGC_HOME`` when set (a container, a regular install in site-packages);
2. the source checkout this package was imported from, when it has ``deploy/torchserve/`` (an
   editable install: ``make setup``, the Dockerfile);
3. the current working directory.

Every launcher and archive setting that uses it can be overridden one by one (``ServerSettings``
fields, ``build_archive(model_config=...)``, ``trustgc archive --model-config``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_VARIABLE", "config_template", "metrics_config", "model_config", "project_dir"]

HOME_VARIABLE = "TRUSTGC_HOME"
_CHECKOUT = Path(__file__).resolve().parents[1]
_TORCHSERVE = Path("deploy") / "torchserve"


def project_dir() -> Path:
    """The project directory (see the module docstring for the order of the choices)."""
    configured = os.environ.get(HOME_VARIABLE)
    if configured:
        return Path(configured).resolve()
    if (_CHECKOUT / _TORCHSERVE).is_dir():
        return _CHECKOUT
    return Path.cwd()


def config_template() -> Path:
    """TorchServe's ``config.properties`` template (paths and ports are filled in per run)."""
    return project_dir() / _TORCHSERVE / "config.properties"


def metrics_config() -> Path:
    """The metrics declarations TorchServe needs to export the handler's metrics."""
    return project_dir() / _TORCHSERVE / "metrics.yaml"


def model_config() -> Path:
    """The production model-config yaml packed into archives (workers, batching, backend)."""
    return project_dir() / _TORCHSERVE / "model-config.yaml"
