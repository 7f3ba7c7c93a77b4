"""Stage any network: :func:`stage` names its parts, :func:`auto_stage` knows a few families.

A network a user brings (their own ``nn.Module``, a torchvision or timm model built in Python)
becomes a :class:`~kdlab.models.staged.view.Staged` view without rewriting it::

    from kdlab.models import stage
    staged = stage(net, stem=["conv1", "bn1", "relu"], stages=["layer1", "layer2", "layer3"],
                   head="fc", input_shape=(3, 32, 32))

Every stage, the stem, ``pre_pool`` and the head are given as dotted module names of ``net``
or as the modules themselves; a stage may list several modules, run in order. One forward
pass on a random input checks that the view reproduces ``net(x)``: a view that leaves a
module out (or lists them out of order) is refused with the largest difference, so that
features distilled from it are the features the network computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from kdlab.core.registry import did_you_mean
from kdlab.errors import UserError
from kdlab.models.staged.view import Staged, _global_avg_pool

Part = str | nn.Module
Parts = Part | Sequence[Part]


def _name_of(net: nn.Module, part: object, where: str) -> str:
    """The dotted name in ``net`` of a module name or module ``part``; UserError otherwise."""
    if isinstance(part, str):
        names = [n for n, _ in net.named_modules() if n]
        if part not in names:
            raise UserError(f"{where} {part!r} is not a module of the "
                            f"{type(net).__name__}.{did_you_mean(part, names)} Its top-level "
                            f"modules are {', '.join(n for n, _ in net.named_children())}.")
        return part
    if isinstance(part, nn.Module):
        for name, module in net.named_modules():
            if module is part and name:
                return name
        raise UserError(f"{where} is a {type(part).__name__} that is not a module of the "
                        f"{type(net).__name__}; pass modules of the network itself (or their "
                        "dotted names).")
    raise UserError(f"{where} must be a module name or a module of the network, got {part!r}.")


def _names(net: nn.Module, parts: Parts, where: str) -> list[str]:
    if isinstance(parts, (str, nn.Module)):
        return [_name_of(net, parts, where)]
    if not isinstance(parts, Sequence):
        raise UserError(f"{where} must be a module name, a module, or a list of them; got "
                        f"{parts!r}.")
    return [_name_of(net, p, f"{where}[{i}]") for i, p in enumerate(parts)]


def check_forward(staged: Staged, what: str) -> int:
    """Check on a random input (eval mode) that ``staged`` reproduces ``staged.net``'s
    forward; returns the number of outputs. A mismatch or a failing pass is a UserError."""
    net = staged.net
    shape = (2, *staged.input_shape)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            try:
                want = net(x.clone())
            except Exception as err:  # noqa: BLE001 - the user's network and input shape
                raise UserError(f"The {what} fails on a random input of shape {shape} "
                                f"({type(err).__name__}: {err}); pass the input_shape "
                                "(C, H, W) it expects.") from None
            if not isinstance(want, Tensor) or want.dim() != 2:
                raise UserError(f"The {what} must return a (batch, classes) tensor of logits "
                                f"to be staged; it returns {type(want).__name__}.")
            try:
                got = staged(x.clone())
            except Exception as err:  # noqa: BLE001 - a wrong stage list
                raise UserError(f"The staged pass of the {what} fails ({type(err).__name__}: "
                                f"{err}); list its stem, stages and head in the order its "
                                "forward runs them.") from None
    finally:
        net.train(was_training)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        diff = ((got - want).abs().max().item() if got.shape == want.shape
                else f"shape {tuple(got.shape)} vs {tuple(want.shape)}")
        raise UserError(f"The staged view of the {what} does not reproduce net(x) (difference "
                        f"{diff}); list every module its forward runs, in order, across stem, "
                        "stages, pre_pool and head.")
    return int(want.shape[1])


def stage(
    net: nn.Module,
    *,
    stages: Sequence[Parts],
    head: Parts,
    stem: Parts = (),
    pre_pool: Parts = (),
    pool: Callable[[Tensor], Tensor] | None = None,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    num_classes: int | None = None,
    check: bool = True,
) -> Staged:
    """See ``net`` as ``stem -> stages -> pre_pool -> pool -> head`` by naming its modules.

    Args:
        net: any network whose forward maps images to logits by running the named modules
            in order (residual blocks inside a module are fine).
        stages: one entry per stage: a module (or its dotted name) or a list of them.
        head: the classifier module(s) applied to the pooled embedding (e.g. ``"fc"``).
        stem: modules run before the first stage (default none: stage 0 holds the stem).
        pre_pool: modules run on the last stage's output before pooling (e.g. a final BN).
        pool: maps the last feature map to the embedding (default global average pooling
            and flattening).
        input_shape: ``(C, H, W)`` of the network's input, for the check and for the stage
            metadata bridges are built from.
        num_classes: number of logits; default: read from the check's forward pass.
        check: run one forward pass to check that the view reproduces ``net(x)``.

    A name that is not a module of ``net``, a module that is not part of it, an empty stage
    list or a view that does not reproduce the forward is a UserError.
    """
    if isinstance(stages, (str, nn.Module)) or not isinstance(stages, Sequence) or not stages:
        raise UserError("stages must be a non-empty list with one entry per stage (a module, "
                        "its dotted name, or a list of them).")
    staged = Staged(
        net,
        stem=_names(net, stem, "stem"),
        stages=[_names(net, s, f"stages[{i}]") for i, s in enumerate(stages)],
        classifier=_names(net, head, "head"),
        pre_pool=_names(net, pre_pool, "pre_pool"),
        pool=pool or _global_avg_pool,
        input_shape=tuple(input_shape),
        num_classes=num_classes or 0,
    )
    if check:
        found = check_forward(staged, type(net).__name__)
        if num_classes is not None and num_classes != found:
            raise UserError(f"num_classes is {num_classes} but the {type(net).__name__} returns "
                            f"{found} logits; leave num_classes out or fix it.")
        staged.num_classes = found
    elif num_classes is None:
        raise UserError("Give num_classes when check=False (no forward pass reads it).")
    return staged


def auto_stage(net: nn.Module, input_shape: tuple[int, int, int]) -> Staged:
    """A staged view of a network kdlab knows how to cut: a :class:`Staged` as it is, a timm
    network (at its ``feature_info`` modules), a torchvision ResNet (FCFD's five stages);
    anything else is a UserError that points to :func:`stage`."""
    if isinstance(net, Staged):
        return net
    if callable(getattr(net, "forward_head", None)) and hasattr(net, "feature_info"):
        from kdlab.models.timm import stage_timm

        staged = stage_timm(net, input_shape=input_shape, num_classes=0)
        staged.num_classes = check_forward(staged, type(net).__name__)
        return staged
    import torchvision

    if isinstance(net, torchvision.models.ResNet):
        from kdlab.models.imagenet import _RESNET_STAGES

        return stage(net, stages=_RESNET_STAGES, head="fc", input_shape=input_shape)
    raise UserError(f"kdlab cannot tell the stages of a {type(net).__name__}; stage it with "
                    "kdlab.models.stage(net, stages=[...], head=...) (see the 'bring your own "
                    "model' guide).")
