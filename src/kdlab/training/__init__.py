"""The training core: one :class:`~kdlab.training.trainer.Trainer` for every method and task
(the run is built by :mod:`.build`, checked by :mod:`.validate`), its optimiser and schedule
(:mod:`.optimisation`), checkpoints, resume and the run lock (:mod:`.checkpoint`,
:mod:`.resume`, :mod:`.run_lock`), torchrun DDP (:mod:`.distributed`), ``torch.compile``
(:mod:`.compiling`), the metrics log and the run report (:mod:`.metrics_log`,
:mod:`.report`), and networks and data handed in from Python (:mod:`.prebuilt`)."""
