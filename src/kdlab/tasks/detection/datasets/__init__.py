"""Detection datasets: ``scenes_det`` (generated from Fashion-MNIST, the offline default) and
COCO / VOC folders on disk (:mod:`.folders`: ``coco``, ``voc2007``, ``voc2012``)."""
