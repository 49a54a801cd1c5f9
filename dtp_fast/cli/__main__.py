"""``python -m dtp_fast.cli ...``: the ``dtp-fast`` command."""
import sys

from . import main

sys.exit(main())
