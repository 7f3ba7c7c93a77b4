"""kdlab: knowledge distillation for vision models, built around FCFD.

Function-Consistent Feature Distillation (Liu et al., ICLR 2023) and the methods it is
compared with, on one training loop. See the README for the command line.
"""

__version__ = "0.1.0"
