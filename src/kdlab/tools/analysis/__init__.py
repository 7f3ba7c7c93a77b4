"""FCFD's analyses of trained networks (Liu et al., ICLR 2023), behind ``kdlab analyze``.

- :mod:`~kdlab.tools.analysis.anisotropy`: function anisotropy of an intermediate feature (Sec. 1).
- :mod:`~kdlab.tools.analysis.exit_branch`: exit branches trained on a frozen teacher's features
  (Sec. 3.4, App. A.2), cached in the teacher's run folder.
- :mod:`~kdlab.tools.analysis.probe`: students' bridged features fed to those exit branches.
- :mod:`~kdlab.tools.analysis.plots`: the figures written beside the JSON results.
"""
