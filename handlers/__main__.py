"""``python -m handlers``: the operator CLI (docs/cli.md)."""

import sys

from handlers.cli import main

sys.exit(main())
