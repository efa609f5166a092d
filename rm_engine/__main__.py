"""``python -m rm_engine``: kept for scripts written before the command line moved to the ``cli`` package; the one
place the engine package reaches up to it."""
import sys

from cli import main

sys.exit(main())
