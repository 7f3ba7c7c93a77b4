"""Distillation of two-stage detectors (FCFD App. D-E): FCFD, KD on ROI outputs, FitNet-style
FPN imitation. They are reached through the registered names ``fcfd``, ``kd`` and ``fitnet``
(their classes' ``for_task("detection")``), not registered themselves.
"""
