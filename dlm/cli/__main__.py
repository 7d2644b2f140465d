"""`python -m dlm.cli …`, the same as `dlm …`."""

import sys

from dlm.cli import main

sys.exit(main())
