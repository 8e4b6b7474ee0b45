import sys

from cltm.cli import main

sys.exit(main())
