"""``kdlab tune``: hyper-parameter search over a recipe with Optuna (``pip install
'kdlab[tune]'``).

- :mod:`kdlab.tools.tune.settings`: what a ``kdlab tune`` process is asked to do;
- :mod:`kdlab.tools.tune.space`: ``--space KEY=SPEC`` (ranges, log ranges, grids, choices, tied
  keys, conditional method spaces);
- :mod:`kdlab.tools.tune.trial`: one trial = one ordinary run folder through the one Trainer, its
  per-epoch scores reported for pruning, a dead trial's rerun continuing its folder;
- :mod:`kdlab.tools.tune.study`: the study in an RDB database (SQLite by default), resumed and
  shared by several processes, dead processes' trials found and run again;
- :mod:`kdlab.tools.tune.results`: ``best.yaml``, ``trials.md`` / ``trials.csv`` and the plots.

The folder of a search (``--out``, default ``runs/tune/<recipe folder>/<recipe name>``)::

    study.db                 the study (unless --storage names another database)
    trials/0000/ ...         one kdlab run folder per trial
    workers/                 a lock file per running tune process
    best.yaml                the best trial as a recipe
    trials.md, trials.csv    every trial
    history.png, importance.png, parallel.png, intermediate.png
"""
