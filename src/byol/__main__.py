import sys

from byol.cli import main

sys.exit(main())
