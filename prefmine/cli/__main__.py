"""`python -m prefmine.cli ...` is the `prefmine` console script."""

import sys

from prefmine.cli.main import main

sys.exit(main())
