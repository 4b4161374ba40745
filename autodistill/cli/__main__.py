"""``python -m autodistill.cli``: the command line (as the `autodistill` script)."""
import sys

from autodistill.cli import main

sys.exit(main())
