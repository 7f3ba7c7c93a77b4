"""Tools built on the training core (:mod:`kdlab.training`), never used by it: the step
benchmark (:mod:`.bench`), the teacher soft-label cache builder (:mod:`.teacher_cache`),
FCFD's analyses (:mod:`.analysis`), export (:mod:`.export`), the quickstart
(:mod:`.quickstart`) and the method reference generator (:mod:`.docs_gen`)."""
