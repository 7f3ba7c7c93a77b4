"""The inheriting strategy: start a student detector from its teacher's non-backbone modules.

FCFD App. E (Table 7), after ICD (Kang et al., NeurIPS 2021): the student's FPN, RPN and ROI
heads are initialised with the teacher's trained parameters; only the backbone body keeps its
own (ImageNet) weights. As in the FCFD authors' ``inherit()``, every tensor of those three
modules is copied, so the two detectors must have them of one shape (e.g. ResNet-101 ->
ResNet-50, whose stages have the same channels); otherwise nothing is copied and a
:class:`~kdlab.errors.UserError` names the first tensors that differ.
"""

from __future__ import annotations

import torch

from kdlab.errors import UserError
from kdlab.tasks.detection.models.detector import Detector

#: the modules the strategy copies, by their path in a torchvision Faster R-CNN
INHERITED = ("backbone.fpn", "rpn", "roi_heads")


def inherit_from(student: Detector, teacher: Detector) -> list[str]:
    """Copy the teacher's FPN, RPN and ROI-head tensors into the student; return their names.

    Raises a UserError (and changes nothing) when a tensor is missing or shaped differently.
    """
    updates: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for path in INHERITED:
        try:
            s_mod, t_mod = student.net.get_submodule(path), teacher.net.get_submodule(path)
        except AttributeError:
            raise UserError(f"The inheriting strategy needs a torchvision Faster R-CNN FPN "
                            f"(module {path!r}) in both detectors; turn method.inherit off "
                            "for this pair.") from None
        s_state, t_state = s_mod.state_dict(), t_mod.state_dict()
        for key in sorted(set(s_state) | set(t_state)):
            s_val, t_val = s_state.get(key), t_state.get(key)
            if s_val is None or t_val is None or s_val.shape != t_val.shape:
                shapes = [tuple(v.shape) if v is not None else "missing" for v in (s_val, t_val)]
                problems.append(f"{path}.{key} (student {shapes[0]}, teacher {shapes[1]})")
            else:
                updates[f"{path}.{key}"] = t_val
    if problems:
        raise UserError(
            f"The inheriting strategy needs the student's FPN, RPN and ROI heads shaped as the "
            f"teacher's, but {len(problems)} tensors differ, e.g. {'; '.join(problems[:3])}; "
            "set method.inherit=false or pick a student whose backbone stages have the "
            "teacher's channels (e.g. ResNet-50 for a ResNet-101 teacher).")
    with torch.no_grad():
        own = student.net.state_dict()
        for key, value in updates.items():
            own[key].copy_(value)
    return sorted(updates)
