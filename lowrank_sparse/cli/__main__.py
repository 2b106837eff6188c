"""``python -m lowrank_sparse.cli ...`` runs the command line."""

import sys

from .app import main

sys.exit(main())
