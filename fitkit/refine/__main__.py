"""``python -m fitkit.refine``."""

import sys

from fitkit.refine.cli import main

sys.exit(main())
