"""Leaf utilities that every layer may use (nothing here imports the rest of kdlab):
collectives over the default process group, mixed-precision contexts, atomic file
writes, and the CPU thread policy."""
