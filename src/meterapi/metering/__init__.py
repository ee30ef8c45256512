"""Usage: the durable ledger, the reporter that sends it to Stripe, and the usage views."""
