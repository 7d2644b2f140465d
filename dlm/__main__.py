"""`python -m dlm ...` is the `dlm` command (what `dlm launch` starts in each process)."""

import sys

from dlm.cli import main

sys.exit(main())
