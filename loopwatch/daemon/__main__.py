"""``python -m loopwatch.daemon`` does what the ``loopwatch`` console script does."""

from loopwatch.daemon.cli import main

main()
