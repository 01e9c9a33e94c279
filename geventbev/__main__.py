"""Run ``python -m geventbev relay ...`` or ``python -m geventbev demo``."""

import sys

from .cli import main

sys.exit(main())
