"""Checking the products on disk against their formats and provenance (python -m cxrtransfer.verify)."""
