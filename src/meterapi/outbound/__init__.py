"""Outbound webhooks (CONTRACT §8): the outbox written beside each change, and its deliverer.

``outbox`` is what services call inside their transaction (``enqueue``) and what operators read
(``list_events``, ``retry``); ``delivery`` sends the outbox to ``METERAPI_WEBHOOK_URL``.
"""
