"""``python -m nsrep.cli``: the ``nsrep`` command (how ``torchrun`` starts it)."""

import sys

from nsrep.cli import main

sys.exit(main())
