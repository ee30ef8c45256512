"""meterapi: sell your HTTP API by usage, billed through your own Stripe account."""

__version__ = "0.1.0"
