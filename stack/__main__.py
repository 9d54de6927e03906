"""``python -m stack``: the ``edgelearn`` command (what child processes of the stack run)."""

import sys

from stack.cli import main

if __name__ == "__main__":  # not when a spawned process (the cloud's trainer) imports it
    sys.exit(main())
