"""`python -m hive_hf.release RUN_DIR REPO_ID ...`: see `hive_hf.release.cli`."""

import sys

from .cli import main

sys.exit(main())
