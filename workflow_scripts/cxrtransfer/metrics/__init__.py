"""Metric definitions (each once) and the patient bootstrap; NumPy only, used by training, attacks and evaluation."""
