"""The staged view of any network: ``stem -> stages[0..N-1] -> head``.

- :mod:`.view`: :class:`~kdlab.models.staged.view.Staged` (``features(x)``, ``run_from(k, f)``),
  the :class:`~kdlab.models.staged.view.Features` it returns and each stage's
  :class:`~kdlab.models.staged.view.StageInfo`.
- :mod:`.staging`: :func:`~kdlab.models.staged.staging.stage` (name a network's stage modules)
  and ``auto_stage`` (torchvision and timm ResNets).
- :mod:`.pairs`: which student stage is distilled from which teacher stage.
"""

from kdlab.models.staged.view import Features, Staged, StageInfo

__all__ = ["Features", "StageInfo", "Staged"]
