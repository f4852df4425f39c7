import sys

from cls.cli import main

sys.exit(main())
