"""Deployable students: ONNX and ``torch.export`` files checked against PyTorch, and the
compression report (``kdlab profile``).

- :mod:`.capture`: ``torch.export`` of a task's deployable graph (:mod:`kdlab.tasks.deploy`)
  with its free dimensions.
- :mod:`.onnx_format`, :mod:`.pt2_format`: writing ONNX (through ``torch.onnx``, run by
  ``onnxruntime``) and ``.pt2`` (``torch.export.save`` / ``load``) files with kdlab's
  metadata.
- :mod:`.verify`: the written file run on real validation images against the PyTorch
  network; :mod:`.write`: a verified file, written atomically.
- :mod:`.activation_memory`, :mod:`.timing`, :mod:`.subjects`, :mod:`.profile`,
  :mod:`.profile_report`: the measurements and the table, CSV and plot of ``kdlab profile``.

ONNX needs the ``deploy`` extra (``pip install 'kdlab[deploy]'``: onnx, onnxscript,
onnxruntime); ``torch.export`` files need torch alone.
"""
