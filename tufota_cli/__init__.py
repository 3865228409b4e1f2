"""The ``tufota`` command: a thin composition root over the tufota packages.

One module per command group; nothing imports this package.
"""
