"""`python -m resumable` runs the `resumable` command."""

import sys

from .cli import main

sys.exit(main())
