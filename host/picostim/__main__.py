"""``python -m picostim`` is the ``picostim`` command."""

import sys

from picostim.cli import main

sys.exit(main())
