import sys

from ssal.cli import main

sys.exit(main())
