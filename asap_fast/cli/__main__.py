"""``python -m asap_fast.cli COMMAND ...``: what ``accelerate launch -m asap_fast.cli sft`` runs on
every process."""

import sys

from asap_fast.cli import main

sys.exit(main())
