"""timm networks by name (``timm/<name>``): staged at timm's feature_info modules without
rewriting (features equal the plain forward, run_from continues from every stage), ViTs as
stage-free views that logit/embedding methods distil and feature methods refuse in one
sentence, weights from a local file only, and FCFD / KD across timm and torchvision or
CIFAR networks. Random weights, 32x32 inputs."""

from __future__ import annotations

import pytest
import torch
import yaml

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models import MODELS, build_model, has_pretrained

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'kdlab[timm]')")

CNNS = {"timm/resnet18": 5, "timm/mobilenetv3_small_100": 5, "timm/efficientnet_b0": 5,
        "timm/convnext_atto": 4, "timm/test_resnet": 5, "timm/test_efficientnet": 5}
VITS = ("timm/vit_tiny_patch16_224", "timm/test_vit")


def _x(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(CNNS))
def test_cnn_stages_reproduce_the_plain_forward(name):
    staged = build_model(name, num_classes=7, input_size=32).eval()
    assert staged.num_stages == CNNS[name]
    x = _x()
    with torch.no_grad():
        plain = staged.net(x)
        f = staged.features(x)
        assert torch.equal(f.logits, plain)
        assert f.embedding.shape == (2, staged.embedding_dim)
        for k in range(staged.num_stages):
            assert torch.allclose(staged.run_from(k, f.stages[k]).logits, plain, atol=1e-6)
    info = staged.stage_info
    assert [s.channels for s in info] == [s.shape[1] for s in f.stages]
    assert staged.kdlab_spec["model"] == name
    assert type(staged.net).__module__.startswith("timm.")  # timm's own model, not rewritten


@pytest.mark.parametrize("name", VITS)
def test_a_vit_is_a_view_without_stages(name):
    staged = build_model(name, num_classes=7, input_size=32).eval()
    assert staged.num_stages == 0
    with torch.no_grad():
        f = staged.features(_x())
        assert f.stages == [] and torch.equal(f.logits, staged.net(_x()))
    assert f.embedding.shape == (2, staged.net.num_features)


def test_names_resolve_through_the_registry():
    assert "timm/resnet18" in MODELS and "timm/not_a_model" not in MODELS
    assert MODELS.get("timm/resnet18") is MODELS.get("timm/resnet18")
    assert has_pretrained("timm/resnet18")
    with pytest.raises(UserError, match="Did you mean 'resnet18'"):
        MODELS.get("timm/resnet18x")


def test_weights_come_from_a_local_file_never_a_download(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False)  # 1000 classes
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    same = build_model("timm/test_resnet", num_classes=1000, input_size=32, pretrained=str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(same.net.state_dict()[k], v), k
    assert same.net.kdlab_pretrained_skipped == []
    other = build_model("timm/test_resnet", num_classes=5, input_size=32, pretrained=str(path))
    assert torch.equal(other.net.conv1[0].weight, source.conv1[0].weight)
    assert other.net.kdlab_pretrained_skipped == ["fc.weight", "fc.bias"]  # fresh classifier
    with pytest.raises(UserError, match="does not download"):
        build_model("timm/test_resnet", num_classes=5, pretrained=True)
    with pytest.raises(UserError, match="does not exist"):
        build_model("timm/test_resnet", num_classes=5, pretrained=str(tmp_path / "nope.pth"))


def _train(name, student, teacher, options=None, steps=3):
    torch.manual_seed(0)
    d = build_distiller(name, options or {}, student, teacher, train_size=64).train()
    params = [p for p in d.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x, y = _x(8), torch.arange(8) % 7
    for _ in range(steps):
        logits, losses = d(x, y, torch.arange(8))
        assert logits.shape == (8, 7)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    return losses


@pytest.mark.parametrize("teacher, student", [("timm/test_resnet", "resnet18"),
                                              ("resnet18", "timm/test_efficientnet")])
def test_fcfd_and_kd_train_across_timm_and_torchvision(teacher, student):
    for method in ("fcfd", "kd"):
        t = build_model(teacher, num_classes=7, input_size=32)
        s = build_model(student, num_classes=7, input_size=32)
        losses = _train(method, s, t)
        assert ("app" in " ".join(losses)) if method == "fcfd" else ("kd" in losses)


def test_kd_between_a_vit_and_a_cifar_network_and_fcfd_refuses_the_vit():
    vit = build_model("timm/test_vit", num_classes=7, input_size=32)
    cifar = build_model("resnet8", num_classes=7, input_size=32)
    _train("kd", cifar, vit)
    _train("kd", build_model("timm/test_vit", num_classes=7, input_size=32),
           build_model("resnet8", num_classes=7, input_size=32))
    with pytest.raises(UserError, match="has no stages.*use a method on logits or embeddings"):
        build_distiller("fcfd", {}, build_model("resnet8", num_classes=7, input_size=32), vit)


def test_a_timm_student_trains_and_exports_from_the_cli(tmp_path, capsys):
    from safetensors.torch import load_file

    from kdlab.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "batch_size": 8, "eval_batch_size": 64,
                 "val_subset": 64},
        "model": {"student": "timm/test_resnet"}, "method": {"name": "ce"},
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": "cpu", "max_steps_per_epoch": 2, "progress": "none"}}))
    run, out = tmp_path / "run", tmp_path / "student.safetensors"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(out)]) == 0
    net = build_model("timm/test_resnet", num_classes=10, input_size=16).net
    net.load_state_dict(load_file(str(out)))  # strict: the plain timm model


def test_simkd_reuses_a_parameter_free_timm_head_and_refuses_one_with_weights():
    student = build_model("resnet18", num_classes=7, input_size=32)
    _train("simkd", student, build_model("timm/test_resnet", num_classes=7, input_size=32),
           steps=1)
    convnext = build_model("timm/test_convnext", num_classes=7, input_size=32)
    assert convnext._pool.outside == ["head.norm.weight", "head.norm.bias"]
    with pytest.raises(UserError, match="pools with weights of its own"):
        build_distiller("simkd", {}, build_model("resnet18", num_classes=7, input_size=32),
                        convnext)


def test_a_combo_on_a_vit_is_checked_part_by_part():
    def vit():
        return build_model("timm/test_vit", num_classes=7, input_size=32)

    def cifar():
        return build_model("resnet8", num_classes=7, input_size=32)

    _train("combo", cifar(), vit(), {"parts": [{"name": "kd"}, {"name": "crd",
                                                                "num_negatives": 8,
                                                                "negatives": "uniform"}]}, steps=1)
    with pytest.raises(UserError, match="Method 'fitnet' distils intermediate feature maps"):
        build_distiller("combo", {"parts": [{"name": "kd"}, {"name": "fitnet"}]}, cifar(), vit())


def test_a_recipe_asking_to_download_timm_weights_fails_before_any_data(tmp_path, capsys):
    from kdlab.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"name": "synthetic"}, "method": {"name": "ce"},
        "model": {"student": "timm/test_resnet", "student_pretrained": True}}))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "reads them from a local file only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
