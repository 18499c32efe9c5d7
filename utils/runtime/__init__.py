"""Where a process runs and how it computes: the process group and the precision.

The bottom layer of `utils`: `modules/` and `dataloaders/` may import it.
"""
