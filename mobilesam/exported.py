"""Old import path of `mobilesam.deploy.runtime` (the runtime predictors' shared numpy layer): the same module."""

import sys

from .deploy import runtime

sys.modules[__name__] = runtime
