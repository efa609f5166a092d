import sys

from rm_engine.cli import main

sys.exit(main())
