"""`python -m refserver ...`: the same as the `refserver` command."""

import sys

from .cli import main

sys.exit(main())
