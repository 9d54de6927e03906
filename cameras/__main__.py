"""``python -m cameras``: run simulated cameras (same options as ``edgelearn camera``)."""

import sys

from cameras.cli import cli

sys.exit(cli())
