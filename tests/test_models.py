"""Models: ssal's small backbones through timm, the Classifier, backbone name checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

import ssal.models  # noqa: F401  (registers the small backbones into timm)
from ssal.errors import ConfigError
from ssal.models import build_model, check_backbone
from ssal.models.heads import Classifier

torch.set_num_threads(2)


def dataset(channels: int = 1, num_classes: int = 10, mean=None, std=None) -> SimpleNamespace:
    return SimpleNamespace(channels=channels, num_classes=num_classes,
                           mean=mean or (0.5,) * channels, std=std or (0.25,) * channels)


@pytest.mark.parametrize("name,in_chans,size,width", [
    ("cnn_small", 1, 28, 128), ("cnn_small", 3, 32, 128), ("cnn_small", 1, 8, 128),
    ("resnet18_cifar", 3, 32, 512), ("resnet18_cifar", 1, 28, 512),
    ("wrn_28_2", 3, 32, 128), ("wrn_28_2", 1, 28, 128),
])
def test_small_backbones_through_timm(name, in_chans, size, width):
    assert timm.is_model(name)
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans).eval()
    assert m.num_features == width
    x = torch.rand(3, in_chans, size, size)
    with torch.no_grad():
        f = m(x)
        assert tuple(f.shape) == (3, width)
        # pooled features are the spatial mean of forward_features
        fmap = m.forward_features(x)
        assert fmap.shape[:2] == (3, width)
        assert torch.allclose(f, fmap.mean(dim=(2, 3)), atol=1e-5)
        # samples are processed independently in eval mode
        assert torch.allclose(m(x[1:2]), f[1:2], atol=1e-5)
    # with classes, the same net returns logits
    m10 = timm.create_model(name, num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        assert tuple(m10(x).shape) == (3, 7)


def test_small_backbones_refuse_pretrained():
    for name in ("cnn_small", "resnet18_cifar", "wrn_28_2"):
        with pytest.raises(ValueError, match="pretrain"):
            timm.create_model(name, pretrained=True, num_classes=0)


def test_resnet18_cifar_stem_keeps_resolution():
    m = timm.create_model("resnet18_cifar", num_classes=0, in_chans=3).eval()
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.padding == (1, 1)
    assert m.conv1.in_channels == 3 and m.conv1.out_channels == 64
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        stem = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        assert tuple(stem.shape) == (2, 64, 32, 32)
        assert tuple(m.forward_features(x).shape) == (2, 512, 4, 4)  # three stride-2 stages after the stem
    # timm's ImageNet resnet18 halves twice in the stem, for contrast
    ref = timm.create_model("resnet18", num_classes=0).eval()
    with torch.no_grad():
        assert tuple(ref.maxpool(ref.act1(ref.bn1(ref.conv1(x)))).shape) == (2, 64, 8, 8)


def wrn_param_count(depth: int = 28, k: int = 2, in_chans: int = 3, num_classes: int = 10) -> int:
    """Parameters of WRN-depth-k by hand: 3x3 convs without bias, 1x1 projection shortcuts, BN (2 per
    channel), a final BN and a linear head."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = in_chans * widths[0] * 9
    for g in range(3):
        c_in, c_out = widths[g], widths[g + 1]
        for i in range(n):
            ci = c_in if i == 0 else c_out
            total += 2 * ci + ci * c_out * 9 + 2 * c_out + c_out * c_out * 9
            if ci != c_out:
                total += ci * c_out
    total += 2 * widths[-1]
    return total + widths[-1] * num_classes + num_classes


def test_wrn_28_2_parameter_count():
    m = timm.create_model("wrn_28_2", num_classes=10, in_chans=3)
    count = sum(p.numel() for p in m.parameters())
    assert count == wrn_param_count()
    assert abs(count - 1.47e6) < 0.01e6  # the published ~1.47M of WRN-28-2 (FixMatch)
    assert len([mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]) == 1 + 12 * 2 + 3
    feats = timm.create_model("wrn_28_2", num_classes=0, in_chans=3)
    assert sum(p.numel() for p in feats.parameters()) == wrn_param_count() - (128 * 10 + 10)


@pytest.mark.parametrize("backbone,channels,size", [("cnn_small", 1, 28), ("resnet18_cifar", 3, 32),
                                                    ("wrn_28_2", 3, 32), ("resnet18", 1, 32)])
def test_build_model_classifier(backbone, channels, size):
    torch.manual_seed(0)
    ds = dataset(channels=channels, num_classes=6, mean=(0.2,) * channels, std=(0.4,) * channels)
    model = build_model(SimpleNamespace(backbone=backbone, drop_rate=0.5), ds)
    assert isinstance(model, Classifier)
    assert model.head.in_features == model.num_features == model.backbone.num_features
    assert model.head.out_features == 6
    assert model.dropout.p == 0.5
    model.eval()
    x = torch.rand(4, channels, size, size)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        assert tuple(logits.shape) == (4, 6) and tuple(feats.shape) == (4, model.num_features)
        assert torch.allclose(logits, model.head(feats), atol=1e-6)
        assert torch.equal(model(x), logits)
        # normalisation happens inside: the backbone sees (x - mean) / std
        assert torch.allclose(feats, model.backbone((x - 0.2) / 0.4), atol=1e-5)


def test_build_model_plain_timm_name_with_one_channel():
    model = build_model(SimpleNamespace(backbone="resnet18", drop_rate=0.0), dataset(channels=1, num_classes=3))
    assert model.backbone.conv1.in_channels == 1
    assert model.num_features == 512
    with torch.no_grad():
        assert tuple(model.eval()(torch.rand(2, 1, 32, 32)).shape) == (2, 3)


def test_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    model = build_model(SimpleNamespace(backbone="cnn_small", drop_rate=0.9), dataset())
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        # train mode: BN uses batch stats, so compare head inputs via the dropout module directly
        model.train()
        model.backbone.eval()
        logits_t, feats_t = model(x, return_features=True)
        assert torch.allclose(feats_t, feats, atol=1e-6)
        assert not torch.allclose(logits_t, logits)


def test_classifier_mean_std_buffers_not_in_state_dict():
    model = build_model(SimpleNamespace(backbone="cnn_small", drop_rate=0.0), dataset())
    keys = model.state_dict().keys()
    assert "mean" not in keys and "std" not in keys
    assert any(k.startswith("head.") for k in keys) and any(k.startswith("backbone.") for k in keys)


@pytest.mark.parametrize("name,suggestion", [("wrn_28_3", "wrn_28_2"), ("resnet18_cifr", "resnet18_cifar"),
                                             ("cnn_smal", "cnn_small"), ("resnet_18", "resnet18")])
def test_unknown_backbone_suggests_closest(name, suggestion):
    with pytest.raises(ConfigError) as e:
        check_backbone(name)
    assert f"did you mean '{suggestion}'" in str(e.value)
    with pytest.raises(ConfigError, match=f"'{name}'"):
        build_model(SimpleNamespace(backbone=name, drop_rate=0.0), dataset())


def test_unknown_backbone_without_close_match_lists_options():
    with pytest.raises(ConfigError) as e:
        check_backbone("zzzzqqqq_nothing_like_it")
    msg = str(e.value)
    assert "did you mean" not in msg and "cnn_small" in msg and "timm.list_models()" in msg


def test_sample_dropout_masks_are_keyed_per_sample():
    """With keys, each sample's mask comes from its key alone: the same in any batch, split or order."""
    from ssal.models.heads import SampleDropout, keyed_dropout
    from ssal.rng import sample_keys

    drop = SampleDropout(0.5).train()
    h = torch.randn(12, 64)
    keys = sample_keys(7, 0, torch.arange(12))
    with keyed_dropout(drop, keys):
        whole = drop(h)
    with keyed_dropout(drop, keys[[5, 1, 9]]):
        part = drop(h[[5, 1, 9]])
    assert torch.equal(part, whole[[5, 1, 9]])
    kept = whole != 0
    assert torch.allclose(whole[kept], 2 * h[kept]) and 0.35 < kept.float().mean() < 0.65  # inverted dropout
    with keyed_dropout(drop, sample_keys(8, 0, torch.arange(12))):
        assert not torch.equal(drop(h), whole)  # other keys, other masks
    assert drop.keys is None  # the block leaves nothing behind
    assert torch.equal(drop.eval()(h), h)


def test_global_batchnorm_in_one_process_is_batchnorm():
    from ssal.models.sync_bn import GlobalBatchNorm, synchronise_batchnorm

    bn = nn.BatchNorm2d(3)
    assert synchronise_batchnorm(bn, torch.device("cpu")) is bn  # one process: unchanged
    g = GlobalBatchNorm(3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(g.train()(x), bn.train()(x), atol=1e-6)
    assert torch.allclose(g.running_var, bn.running_var) and torch.allclose(g.running_mean, bn.running_mean)


@pytest.mark.slow  # a process group: ~15 s; CI runs it
def test_global_batchnorm_under_two_processes_is_batchnorm_of_the_global_batch(tmp_path):
    """torchrun, 2 CPU processes, each with half of a batch of 8: outputs, input and parameter
    gradients (averaged as DDP does) and running statistics equal BatchNorm's on the whole batch."""
    from conftest import run_two_processes

    script = tmp_path / "dist_bn.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from torch import nn\n"
        "from ssal.models.sync_bn import GlobalBatchNorm, _convert, check_replicas_agree\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(8, 3, 4, 4, generator=g) * 3 + 1\n"
        "w = torch.randn(8, 3, 4, 4, generator=g)  # the loss: sum(w * bn(x)) / 8\n"
        "ref = nn.BatchNorm2d(3, momentum=0.3)\n"
        "with torch.no_grad():\n"
        "    ref.weight.uniform_(0.5, 1.5, generator=g); ref.bias.uniform_(-1, 1, generator=g)\n"
        "net = _convert(nn.Sequential(nn.BatchNorm2d(3, momentum=0.3)))\n"
        "net[0].load_state_dict(ref.state_dict())\n"
        "assert isinstance(net[0], GlobalBatchNorm)\n"
        "xr = x.clone().requires_grad_()\n"
        "(ref(xr) * w).sum().div(8).backward()\n"
        "mine = x[rank * 4:(rank + 1) * 4].clone().requires_grad_()\n"
        "out = net(mine)\n"
        "(out * w[rank * 4:(rank + 1) * 4]).sum().div(4).backward()  # the local mean, as each process has\n"
        "with torch.no_grad():\n"
        "    full = nn.functional.batch_norm(x, None, None, ref.weight, ref.bias, True)\n"
        "assert torch.allclose(out, full[rank * 4:(rank + 1) * 4], atol=1e-5)\n"
        "assert torch.allclose(mine.grad / 2, xr.grad[rank * 4:(rank + 1) * 4], atol=1e-6)  # DDP averages by 2\n"
        "for p, q in zip(net[0].parameters(), ref.parameters()):\n"
        "    grad = p.grad.clone(); dist.all_reduce(grad); grad /= 2\n"
        "    assert torch.allclose(grad, q.grad, atol=1e-6), (grad, q.grad)\n"
        "assert torch.allclose(net[0].running_mean, ref.running_mean, atol=1e-6)\n"
        "assert torch.allclose(net[0].running_var, ref.running_var, atol=1e-5)\n"
        "check_replicas_agree(net, 'test')\n"
        "net[0].running_mean += rank  # processes that disagree are caught\n"
        "try:\n"
        "    check_replicas_agree(net, 'test'); raise SystemExit('not caught')\n"
        "except RuntimeError as e:\n"
        "    assert 'different buffers' in str(e)\n"
        "print(f'rank {rank} ok', flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    run_two_processes(script, port=29559)
