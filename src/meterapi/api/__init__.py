"""The HTTP surface: thin routers that parse, call the domain, and shape the answer."""
