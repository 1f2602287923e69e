"""The benchmark helpers live in the package (``asap_fast.bench.common``, also behind ``asap bench``);
this name stays for the scripts that import it."""

from asap_fast.bench.common import *  # noqa: F401,F403
from asap_fast.bench.common import RESULTS_CSV, git_sha  # noqa: F401
