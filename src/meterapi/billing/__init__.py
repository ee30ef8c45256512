"""Everything that talks to Stripe: the gateway, Checkout, and the webhook inbox."""
