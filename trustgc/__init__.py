"""trustgc core: the IB-INN generative classifier and its scoring math.

Framework-agnostic: imported by the training subproject and by every server adapter.
Importing this package has no side effects.
"""

__version__ = "0.1.0"
