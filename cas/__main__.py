"""`python -m cas`: the same as the `cas` command."""

import sys

from .cli import main

sys.exit(main())
