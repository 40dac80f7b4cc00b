"""``python -m pydistributed``: the same as the ``pydist`` command."""

import sys

from pydistributed.cli import main

sys.exit(main())
