import sys

from c2b.cli import main

sys.exit(main())
