"""API keys: format, keyed hash, issue/rotate/revoke/authenticate, and the key cache."""
