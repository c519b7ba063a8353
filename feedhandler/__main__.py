"""`python -m feedhandler`: the command line (feedhandler.cli)."""

import sys

from feedhandler.cli import main

sys.exit(main())
