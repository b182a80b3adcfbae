"""``python -m mmvm``: the ``mmvm`` command line, the console script's entry point."""

import sys

from mmvm.cli import main

if __name__ == "__main__":
    sys.exit(main())
