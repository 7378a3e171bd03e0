"""``python -m gslora`` (and ``torchrun ... -m gslora``): the command line."""

import sys

from gslora.cli import main

sys.exit(main())
