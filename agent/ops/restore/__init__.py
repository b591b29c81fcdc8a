"""Restores: the run (staged or in place), its preflight, the swap, recovery after a crash, point in time,
and the restore at start-up."""
