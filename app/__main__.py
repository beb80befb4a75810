"""`python -m stripeline`: the `stripeline` command."""

import sys

from stripeline.commands.cli import main

sys.exit(main())
