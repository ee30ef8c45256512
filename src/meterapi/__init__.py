"""meterapi: sell your HTTP API by usage, billed through your own Stripe account.

The public API: ``PaidCaller`` and ``Usage`` for paid routes, ``Caller`` (who pays), and
``create_app`` to build the service with your routers (CONTRACT §6).
"""

__version__ = "0.1.0"

from meterapi.api.paid import Caller, PaidCaller, Usage
from meterapi.app import create_app

__all__ = ["Caller", "PaidCaller", "Usage", "__version__", "create_app"]
