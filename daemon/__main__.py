"""``python -m daemon`` does what the ``loopwatch`` console script does."""

from daemon.cli import main

main()
