import sys

from mmvm.cli import main

sys.exit(main())
