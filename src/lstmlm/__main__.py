import sys

from lstmlm.cli import main

sys.exit(main())
