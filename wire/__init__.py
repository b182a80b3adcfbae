"""The wire between the Flower apps: typed federation messages as Flower RecordDicts.

Both ``server/`` and ``client/`` import this package; the core (``mmvm/``) defines
the messages and knows nothing of Flower.
"""
