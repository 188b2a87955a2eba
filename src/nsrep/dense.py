"""The old import path of :mod:`nsrep.tasks.dense` (README examples used ``from nsrep.dense import FPNNeck``);
kept so user code that imports it keeps working. New code imports :mod:`nsrep.tasks.dense`."""

from nsrep.tasks.dense import *  # noqa: F403
from nsrep.tasks.dense import __all__  # noqa: F401
