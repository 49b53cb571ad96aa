"""`python -m neuroevo_sparse` is the `neuroevo` command."""

import sys

from .cli import main

sys.exit(main())
