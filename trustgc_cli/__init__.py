"""The ``trustgc`` command line: an application package on top of the core and its subprojects.

The core (``trustgc``) knows nothing of the command line.  Each subproject declares its own
subcommands in a ``commands`` module (``training.commands``, ``serving.commands``, and
``trustgc_cli.core_commands`` for the core-only ones); :mod:`trustgc_cli.main` assembles them.
"""
