"""``python -m snnverify`` is the ``snnverify`` command."""

import sys

from snnverify.cli import main

sys.exit(main())
