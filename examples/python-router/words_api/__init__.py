"""An example paid API served by meterapi: a text endpoint billed per word."""
