"""``python -m stack``: the ``edgelearn`` command (what child processes of the stack run)."""

import sys

from stack.cli import main

sys.exit(main())
