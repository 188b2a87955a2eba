"""The old import path of :mod:`nsrep.deploy` (README examples used ``nsrep.export.load_deployed``); kept so
user code that imports it keeps working. New code imports :mod:`nsrep.deploy`."""

from nsrep.deploy import *  # noqa: F403
from nsrep.deploy import __all__  # noqa: F401
