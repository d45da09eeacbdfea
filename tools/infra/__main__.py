"""``python -m tools.infra``: see :mod:`tools.infra.cli`."""

import sys

from tools.infra.cli import main

sys.exit(main())
