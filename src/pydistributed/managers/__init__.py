"""Cluster managers. ``base`` defines the interface; ``local`` and ``ssh`` implement it.

Nothing is imported here eagerly: the runtime imports ``managers.base`` alone.
"""
