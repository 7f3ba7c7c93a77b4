"""``kdlab bench``: training steps of several methods timed on random data (:mod:`.bench`),
their cost over batch sizes and thread counts (:mod:`.scaling`) and their FLOPs
(:mod:`.flops`)."""
