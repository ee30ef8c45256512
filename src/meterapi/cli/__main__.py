"""``python -m meterapi.cli``: the same as the ``meterapi`` command."""

from meterapi.cli import main

raise SystemExit(main())
