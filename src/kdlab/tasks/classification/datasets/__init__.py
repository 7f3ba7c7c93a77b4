"""Classification datasets: ``fashion_mnist`` (the default), ``cifar10`` / ``cifar100``,
``imagenet`` (folders) and ``synthetic``."""
