"""Segmentation datasets: ``scenes_seg`` (generated from Fashion-MNIST, the offline default)
and folders on disk read through :mod:`.folders`: ``voc_seg``, ``cityscapes``, ``ade20k``."""
