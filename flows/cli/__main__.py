"""``python -m obsflow.flows.cli``: the ``obsflow`` command."""

import sys

from obsflow.flows.cli.main import main

sys.exit(main())
