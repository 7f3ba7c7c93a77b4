"""The classification task: :class:`~kdlab.tasks.classification.task.Classification`
(labels, cross-entropy, top-1 / top-5) and its datasets (:mod:`.datasets`: Fashion-MNIST,
CIFAR-10/100, ImageNet folders, synthetic). Its networks are the backbones of
:mod:`kdlab.models`, which the other tasks build on too."""

from kdlab.tasks.classification.task import Classification

__all__ = ["Classification"]
