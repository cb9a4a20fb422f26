import sys

from epalm.cli import main

sys.exit(main())
