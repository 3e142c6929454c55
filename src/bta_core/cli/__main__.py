"""``python -m bta_core.cli``: the same as the ``bta-core`` command (e.g. under torchrun)."""

import sys

from . import main

sys.exit(main())
