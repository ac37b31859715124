"""Persistence: the checkpoint's commit order, files, Redis records, restore and resume."""
