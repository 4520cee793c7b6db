"""Lowest layer: file outputs written atomically, logging, path templates, provenance and the readers of products every stage shares. Imports nothing of the package but its root."""
