"""``python -m tinkex_trio`` runs the command line."""

import sys

from tinkex_trio.cli import main

sys.exit(main())
