"""``python -m trustgc_cli ...`` (what ``torchrun -m trustgc_cli train ...`` runs)."""

import sys

from trustgc_cli.main import main

sys.exit(main())
