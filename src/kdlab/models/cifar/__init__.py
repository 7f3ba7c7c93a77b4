"""The CIFAR model zoo of the CRD / RepDistiller KD benchmark (Tian et al., ICLR 2020).

resnet.py (resnet8..110, resnet8x4, resnet32x4), wrn.py (wrn_16_1/16_2/40_1/40_2), vgg.py
(vgg8/11/13/16/19, with BN), mobilenetv2.py (mobilenetv2 = mobile_half), shufflenetv1.py
(shufflev1), shufflenetv2.py (shufflev2), resnetv2.py (resnet50_cifar). Heads pool
adaptively, so every network also runs on 1x28x28 Fashion-MNIST images.
"""
