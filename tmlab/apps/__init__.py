"""Notebooks shipped with tmlab to be served as apps (``tmlab demo``): package data only."""
