"""Plugins bundled with Stratavore, installed as ``stratavore.bundled_plugins`` (never a top-level package).

Each module is registered explicitly by :mod:`stratavore.plugins` under its module name.
"""
