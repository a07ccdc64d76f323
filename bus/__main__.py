"""``python -m bus`` is the ``docbus`` command."""

from bus.cli import main

main()
