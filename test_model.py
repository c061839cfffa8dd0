"""The whole test suite: model, init, augment, data, train and bench, on the CPU with small data the tests make.

Needs torch, torchvision, pillow and pytest (requirements.txt). Nothing here reads ../shared or the network.

    python -m pytest test_model.py            # the whole suite, a few minutes on 2 CPU cores
    python -m pytest test_model.py -k mixup   # one part

Multi-process tests run torchrun with gloo on the CPU. What needs CUDA (NCCL, several GPUs) cannot run here; the
code guards it instead (runtime.broadcast_buffers refuses a tensor off the training device; the stop vote uses only
device tensors), and the collective tests below check which tensors reach a collective.
"""
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import augment
import data
import demo
import init
import lamb
import model
import runtime
import train


def tv_resnet50_seeded(seed, **kwargs):
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None, **kwargs)


def our_resnet50_seeded(seed, **kwargs):
    torch.manual_seed(seed)
    return init.init_weights(model.resnet50(**kwargs), fc_std=None)


# ---------------------------------------------------------------------------------------------------- model.py

def test_state_dict_keys_shapes_and_order_match_torchvision():
    ours, theirs = model.resnet50().state_dict(), torchvision.models.resnet50(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours)
    ours_modules = [(n, type(m).__name__) for n, m in model.resnet50().named_modules()]
    theirs_modules = [(n, type(m).__name__) for n, m in torchvision.models.resnet50(weights=None).named_modules()]
    assert [n for n, _ in ours_modules] == [n for n, _ in theirs_modules]


def test_checkpoints_load_both_ways_strict():
    ours, theirs = our_resnet50_seeded(1, num_classes=10), tv_resnet50_seeded(2, num_classes=10)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours2 = model.resnet50(num_classes=10)
    ours2.load_state_dict(tv_resnet50_seeded(3, num_classes=10).state_dict(), strict=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_same_weights_same_outputs(mode):
    theirs = tv_resnet50_seeded(0)
    ours = model.resnet50()
    ours.load_state_dict(theirs.state_dict())
    getattr(ours, mode)(), getattr(theirs, mode)()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(ours(x), theirs(x))
    if mode == "train":  # BatchNorm running statistics moved identically too
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_same_seed_gives_bit_identical_weights_to_torchvision():
    ours, theirs = our_resnet50_seeded(123).state_dict(), tv_resnet50_seeded(123).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    torch.manual_seed(5)
    a = model.create_model("resnet50", 10).state_dict()
    torch.manual_seed(5)
    b = model.create_model("tv_resnet50", 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_v15_stride_on_3x3():
    block = model.resnet50().layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_parameter_count():
    assert sum(p.numel() for p in model.resnet50().parameters()) == 25_557_032


def test_flops_equal_torchvision():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(m):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m.eval()(torch.randn(1, 3, 224, 224))
        return counter.get_total_flops()

    ours, theirs = flops(model.resnet50()), flops(torchvision.models.resnet50(weights=None))
    assert ours == theirs
    assert abs(ours / 2 / 1e9 - 4.09) < 0.01  # FlopCounterMode counts a multiply-add as 2 FLOPs


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet101", "resnet152"])
def test_family_matches_torchvision(name):
    torch.manual_seed(0)
    ours = init.init_weights(getattr(model, name)(), fc_std=None).state_dict()
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None).state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_create_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        model.create_model("resnet51")


# ----------------------------------------------------------------------------------------------------- init.py

def test_init_statistics():
    torch.manual_seed(0)
    m = init.init_weights(model.resnet50(), zero_init_residual=True, fc_std=0.01)
    for conv in [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]:
        if conv.weight.numel() >= 10_000:  # enough samples for a tight estimate
            assert abs(conv.weight.std().item() / init.expected_conv_std(conv) - 1) < 0.05
        assert abs(conv.weight.mean().item()) < 0.05 * init.expected_conv_std(conv) + 1e-3
    assert abs(m.fc.weight.std().item() - 0.01) < 0.0005 and torch.all(m.fc.bias == 0)
    last_bns = {id(b.bn3) for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer}
    for bn in [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]:
        assert torch.all(bn.bias == 0)
        assert torch.all(bn.weight == (0 if id(bn) in last_bns else 1))
    assert len(last_bns) == 16


def test_init_on_torchvision_model_and_basic_blocks():
    tv = init.init_weights(torchvision.models.resnet18(weights=None), zero_init_residual=True)
    assert all(torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1) for b in tv.layer1)
    assert torch.all(tv.layer2[0].downsample[1].weight == 1)  # the shortcut's BN is not the residual branch


def test_fc_std_none_leaves_linear_untouched():
    m = model.resnet50()
    before = m.fc.weight.clone()
    init.init_weights(m, fc_std=None)
    assert torch.equal(before, m.fc.weight)


# -------------------------------------------------------------------------------------------------- augment.py

def test_one_hot_and_soft_cross_entropy_match_label_smoothing():
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    for eps in (0.0, 0.1, 0.3):
        targets = augment.one_hot(labels, 5, eps)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        expected = F.cross_entropy(logits, labels, label_smoothing=eps)
        assert torch.allclose(augment.soft_cross_entropy(logits, targets), expected, atol=1e-6)


def test_mixup_is_exact_lambda_mix():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6)
    targets = augment.one_hot(labels, 6)
    mixed, soft = augment.mixup(images, targets, 0.4, generator=g)
    assert torch.allclose(soft.sum(1), torch.ones(6))
    lam = soft[0, 0].item()  # sample 0 keeps weight lam on its own label, 1-lam on its partner's (sample 5)
    assert 0 < lam < 1 and math.isclose(soft[0, 5].item(), 1 - lam, rel_tol=1e-5)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)


def test_cutmix_pixel_fraction_equals_target_weight():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        images = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 3, 13, 17).clone()  # image i is all i
        targets = augment.one_hot(torch.arange(4), 4)
        mixed, soft = augment.cutmix(images, targets, 1.0, generator=g)
        assert torch.allclose(soft.sum(1), torch.ones(4))
        for i in range(4):
            kept = (mixed[i] == i).float().mean().item()
            pasted = (mixed[i] == (i - 1) % 4).float().mean().item()
            assert math.isclose(kept + pasted, 1.0, abs_tol=1e-6)
            assert math.isclose(soft[i, i].item(), kept, abs_tol=1e-6)
            assert math.isclose(soft[i, (i - 1) % 4].item(), pasted, abs_tol=1e-6)


def test_alpha_zero_is_identity_and_smoothing_alone():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    targets = augment.one_hot(labels, 4)
    assert augment.mixup(images, targets, 0.0) == (images, targets)
    assert augment.cutmix(images, targets, 0.0) == (images, targets)
    out_images, out_targets = augment.MixupCutmix(4, 0.0, 0.0, smoothing=0.1)(images, labels)
    assert out_images is images and torch.allclose(out_targets, augment.one_hot(labels, 4, 0.1))


def test_mixup_cutmix_switch_and_smoothing_before_mixing():
    g = torch.Generator().manual_seed(0)
    mix = augment.MixupCutmix(4, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, smoothing=0.1, generator=g)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for _ in range(10):
        _, targets = mix(images, labels)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        assert targets.min() >= 0.1 / 4 - 1e-6  # smoothing floor survives mixing of two smoothed one-hots


def test_generator_makes_it_reproducible_and_leaves_global_rng_alone():
    images, labels = torch.randn(4, 3, 16, 16), torch.arange(4)
    state = torch.get_rng_state()
    a = augment.MixupCutmix(4, generator=torch.Generator().manual_seed(7))(images, labels)
    b = augment.MixupCutmix(4, generator=torch.Generator().manual_seed(7))(images, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(state, torch.get_rng_state())


def test_other_device_stays_there():
    device = torch.device("meta")  # a non-CPU device that every machine has; cuda when present
    if torch.cuda.is_available():
        device = torch.device("cuda")
    images = torch.randn(4, 3, 8, 8, device=device)
    labels = torch.arange(4, device=device)
    for mix in (augment.MixupCutmix(4, 0.2, 0.0), augment.MixupCutmix(4, 0.0, 1.0)):
        out, targets = mix(images, labels)
        assert out.device.type == device.type and targets.device.type == device.type


def test_soft_cross_entropy_weights_drop_samples_at_a_fixed_scale():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    targets = augment.one_hot(labels, 3)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.allclose(augment.soft_cross_entropy(logits, targets, weights), (per_sample * weights).sum() / 4)
    assert torch.allclose(augment.soft_cross_entropy(logits, targets, torch.ones(4)), per_sample.mean())


# ------------------------------------------------------------------------------- augment.py: on the device

def photo_batch(n=6, size=(37, 45), seed=0):
    """Photo-like uint8 images [n, 3, H, W] (smooth areas and edges, one nearly flat channel) and their PIL twins."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, 6, 7, generator=g), size=size, mode="bicubic").clamp(0, 1)
    images = (smooth * 200 + 30 * torch.rand(n, 3, *size, generator=g)).to(torch.uint8)
    images[0, 2] = 77  # a flat channel: autocontrast and equalize leave it alone
    return images, [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]


def pil_to_uint8(image):
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def test_pointwise_ops_equal_pils_pixel_for_pixel():
    """Each op against the PIL function timm and torchvision call, same image, same parameter: equal."""
    from PIL import ImageEnhance, ImageOps
    images, pil = photo_batch()

    def solarize_add(image, add):  # timm's, a lookup table
        return image.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
    cases = [(augment.auto_contrast, lambda im, _: ImageOps.autocontrast(im), [0]),
             (augment.equalize, lambda im, _: ImageOps.equalize(im), [0]),
             (augment.invert, lambda im, _: ImageOps.invert(im), [0]),
             (augment.posterize, ImageOps.posterize, [1, 2, 4, 8]),
             (augment.solarize, ImageOps.solarize, [0, 103, 128.5, 256]),
             (augment.solarize_add, solarize_add, [0, 66, 110])]
    cases += [(getattr(augment, name), lambda im, f, e=enhance: e(im).enhance(f), [0.1, 0.46, 1.0, 1.54, 1.9])
              for name, enhance in (("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                                    ("brightness", ImageEnhance.Brightness), ("sharpness", ImageEnhance.Sharpness))]
    for ours, theirs, params in cases:
        for p in params:
            out = ours(images, torch.full((len(images),), p, dtype=torch.float64))
            assert torch.equal(out, torch.stack([pil_to_uint8(theirs(im, p)) for im in pil])), (ours.__name__, p)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_geometric_ops_match_pils_within_interpolation(interpolation):
    """PIL's rotate and affine transform (its pixel-centre convention and fill): bilinear within rounding (1 level);
    bicubic within torch's kernel (a = -0.75) against PIL's (a = -0.5): 16/255 on real photos, 0.68 on average."""
    images, pil = photo_batch()
    resample = getattr(Image, interpolation.upper())
    n, h, w = len(images), images.shape[2], images.shape[3]
    for degrees in (-18.3, 30.0, 90.0):
        matrix = augment.rotation_matrix(torch.full((n,), degrees), w, h)
        theirs = torch.stack([pil_to_uint8(im.rotate(degrees, resample, fillcolor=augment.MEAN_FILL)) for im in pil])
        diff = (augment.affine(images, matrix, augment.MEAN_FILL, interpolation).int() - theirs.int()).abs()
        assert diff.max() <= 1 if interpolation == "bilinear" else diff.float().mean() < 1.0
    for data_, matrix in (((1, 0.3, 0, 0, 1, 0), augment._shear(torch.full((n,), 0.3), 0)),
                          ((1, 0, 0, -0.18, 1, 0), augment._shear(torch.full((n,), -0.18), 1)),
                          ((1, 0, 12.6, 0, 1, 0), augment._shift(torch.full((n,), 12.6), 0))):
        theirs = torch.stack([pil_to_uint8(im.transform(im.size, Image.AFFINE, data_, resample,
                                                        fillcolor=augment.MEAN_FILL)) for im in pil])
        diff = (augment.affine(images, matrix, augment.MEAN_FILL, interpolation).int() - theirs.int()).abs()
        assert diff.max() <= 1 if interpolation == "bilinear" else diff.float().mean() < 1.0


def test_rand_augment_levels_are_timms_rand_m6_mstd05_inc1():
    """timm's _RAND_INCREASING_TRANSFORMS level functions, at magnitude 6 and 10, both signs."""
    ra = augment.RandAugment()
    m, sign = torch.tensor([6.0, 6.0, 10.0], dtype=torch.float64), torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    table = dict(zip(ra.OPS, ra.table(m, sign, 160, 120)))
    assert table["posterize"][1].tolist() == [2, 2, 0] and table["solarize"][1].tolist() == [103, 103, 0]
    assert table["solarize_add"][1].tolist() == [66, 66, 110] and table["color"][1].tolist() == \
        pytest.approx([1.54, 0.46, 1.9])
    assert table["translate_x"][1][:, 2].tolist() == pytest.approx([0.27 * 160, -0.27 * 160, 0.45 * 160])
    assert table["shear_y"][1][:, 3].tolist() == pytest.approx([0.18, -0.18, 0.3])
    rotation = augment.rotation_matrix(torch.tensor([18.0, -18.0, 30.0]), 160, 120)
    assert torch.allclose(table["rotate"][1], rotation) and ra.fill == (124, 116, 104)
    assert len(ra.OPS) == 15 and ra.interpolation == "bicubic"


def test_rand_augment_untouched_share_reproducible_and_off_the_host_rng():
    """Each of 2 ops skipped with probability 0.5: about a quarter of images come out untouched (timm: 24% of 300
    photos at 160 px; ours on the same photos in BENCHMARKS). Same generator seed, same batch; global RNG untouched."""
    images, _ = photo_batch(400, (24, 24))
    state = torch.get_rng_state()
    out = augment.RandAugment()(images, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state) and out.dtype == torch.uint8 and out.shape == images.shape
    untouched = (out == images).flatten(1).all(1).float().mean()
    assert 0.19 < untouched < 0.33
    assert torch.equal(out, augment.RandAugment()(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, augment.RandAugment()(images, torch.Generator().manual_seed(2)))


def test_trivial_augment_wide_ops_and_bins_are_torchvisions():
    images, _ = photo_batch(280, (24, 24))
    ta = augment.TrivialAugmentWide()
    assert len(ta.OPS) == 14 and ta.num_bins == 31 and ta.fill == (0, 0, 0)
    out = ta(images, torch.Generator().manual_seed(0))
    untouched = (out == images).flatten(1).all(1).float().mean()  # identity, and zero-magnitude bins of the others
    assert 1 / 14 <= untouched < 0.2 and out.dtype == torch.uint8
    level = torch.arange(31)  # torchvision: 8 - (arange(31) / ((31 - 1) / 6)).round().int(): 8 bits down to 2
    assert (8 - (level / 5).round()).tolist()[::5] == [8, 7, 6, 5, 4, 3, 2]


def test_mixing_partner_is_never_a_copy_with_repeated_augmentation():
    """V2's 4 copies of each image sit side by side in the step's order: the partner (i - shift) is another image
    whatever the world size and accumulation."""
    for world, accum, batch in ((1, 1, 16), (1, 2, 8), (2, 1, 8), (4, 1, 4), (8, 2, 4)):
        shift = math.ceil(4 / (world * accum))
        for rank in range(world):
            sampler = data.GlobalBatchSampler(512, batch, rank, world, seed=0, reps=4, accum=accum)
            items = [i for _, i, _ in sampler]
            for micro in (items[k:k + batch] for k in range(0, len(items), batch)):
                assert all(a != b for a, b in zip(micro, micro[-shift:] + micro[:-shift])), (world, accum)


# --------------------------------------------------------------------------------------- lamb.py, BCE loss

def reference_lamb(weights, grads_per_step, groups, betas=(0.9, 0.999), eps=1e-6, max_grad_norm=1.0):
    """LAMB written out from timm/optim/lamb.py with its defaults, on plain tensors (no optimizer machinery).

    weights: list of tensors; groups: list of (indices into weights, lr, weight_decay). Returns the weights after
    every step and the global gradient norm of every step.
    """
    w = [x.clone() for x in weights]
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    history, norms = [], []
    for t, grads in enumerate(grads_per_step, start=1):
        global_norm = torch.sqrt(sum((g * g).sum() for g in grads))
        norms.append(float(global_norm))
        clip = max(float(global_norm) / max_grad_norm, 1.0)
        for indices, lr, wd in groups:
            for i in indices:
                g = grads[i] / clip
                m[i] = betas[0] * m[i] + (1 - betas[0]) * g
                v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
                update = m_hat / (torch.sqrt(v_hat) + eps)
                if wd != 0:
                    update = update + wd * w[i]
                    w_norm, u_norm = float(w[i].norm()), float(update.norm())
                    update = update * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
                w[i] = w[i] - lr * update
        history.append([x.clone() for x in w])
    return history, norms


def make_problem(steps=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (3, 4, 2), (8,), (5,), (6, 3)]
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    weights[4].zero_()  # ||w|| = 0: trust ratio 1 on the first step
    # Steps alternate between gradients far above max_grad_norm (clipping on) and tiny ones (clipping off).
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * (30.0 if k % 2 == 0 else 0.01) for s in shapes]
             for k in range(steps)]
    groups = [([0, 1, 4], 0.01, 0.05), ([2, 3], 0.003, 0.0)]
    return weights, grads, groups


def make_lamb(params, groups):
    return lamb.Lamb([{"params": [params[i] for i in idx], "lr": lr, "weight_decay": wd} for idx, lr, wd in groups],
                lr=1.0, weight_decay=0.5)


def run_lamb(optimizer, params, grads_per_step):
    out = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)  # gradients are not modified in place
        out.append([p.detach().clone() for p in params])
    return out


def test_lamb_matches_written_out_algorithm():
    weights, grads, groups = make_problem()
    expected, norms = reference_lamb(weights, grads, groups)
    assert max(norms) > 100 and min(norms) < 1  # both clipping branches ran
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    got = run_lamb(make_lamb(params, groups), params, grads)
    for step, (g, e) in enumerate(zip(got, expected)):
        for a, b in zip(g, e):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"step {step + 1}")
    assert all(not torch.equal(a, w) for a, w in zip(got[-1], weights))  # every tensor moved


def test_lamb_closure_and_no_decay_group_is_plain_adam():
    # With weight_decay 0 and no clipping, one LAMB step is one Adam step with the same eps.
    w = torch.randn(10, dtype=torch.float64)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    optimizer = lamb.Lamb([a], lr=0.1, weight_decay=0.0, max_grad_norm=None)
    adam = torch.optim.Adam([b], lr=0.1, eps=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = (a ** 3).sum()
        loss.backward()
        return loss

    for _ in range(3):
        before = (a.detach() ** 3).sum()
        assert torch.equal(optimizer.step(closure), before)  # step runs the closure with grad on and returns its loss
        b.grad = a.grad.clone()
        adam.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-12)


def test_lamb_state_dict_round_trip():
    weights, grads, groups = make_problem(steps=8, seed=1)
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = make_lamb(params, groups)
    run_lamb(optimizer, params, grads[:4])
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach() for p in params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [torch.nn.Parameter(w.clone()) for w in saved["params"]]
    resumed = make_lamb(resumed_params, [(idx, 123.0, 0.7) for idx, _, _ in groups])  # hyperparameters restored too
    resumed.load_state_dict(saved["optimizer"])
    assert [g["step"] for g in resumed.param_groups] == [4, 4]
    assert [(g["lr"], g["weight_decay"]) for g in resumed.param_groups] == [(lr, wd) for _, lr, wd in groups]
    continued = run_lamb(optimizer, params, grads[4:])
    again = run_lamb(resumed, resumed_params, grads[4:])
    for g, e in zip(again, continued):
        for a, b in zip(g, e):
            assert torch.equal(a, b)


def bce_formula(logits, targets):
    p = torch.sigmoid(logits.double())
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p))


def test_binary_cross_entropy_against_its_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=gen) * 3
    targets = torch.softmax(torch.randn(6, 10, generator=gen) * 2, 1)  # soft rows summing to 1
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, 0.0])
    terms = bce_formula(logits, targets.double())
    torch.testing.assert_close(augment.binary_cross_entropy(logits, targets).double(), terms.mean())
    torch.testing.assert_close(augment.binary_cross_entropy(logits, targets, weights=weights).double(),
                               (terms.mean(1) * weights.double()).sum() / 6)
    hard = (targets > 0.2).double()
    assert 0 < hard.sum() < hard.numel()  # the threshold really splits
    torch.testing.assert_close(augment.binary_cross_entropy(logits, targets, target_threshold=0.2).double(),
                               bce_formula(logits, hard).mean())
    torch.testing.assert_close(augment.binary_cross_entropy(logits, targets, 0.2, weights).double(),
                               (bce_formula(logits, hard).mean(1) * weights.double()).sum() / 6)
    # Unit weights give the plain mean; half-precision logits are computed in float32.
    torch.testing.assert_close(augment.binary_cross_entropy(logits, targets, weights=torch.ones(6)),
                               augment.binary_cross_entropy(logits, targets))
    out = augment.binary_cross_entropy(logits.bfloat16(), targets)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(logits.bfloat16().float(), targets))


# ------------------------------------------------------------------------------------------- data.py, demo.py

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--recipe", "v2", "--ra-reps", "1", "--batch-size", "4", "--global-batch", "4", "--train-res", "32",
        "--val-res", "32", "--val-resize", "36", "--workers", "0", "--warmup-epochs", "0.5", "--lr", "0.5",
        "--log-every", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_image_folder(root, classes=("a", "b"), train_per_class=6, val_per_class=3, size=40, seed=0):
    """A tiny ImageNet-layout set of random JPEGs (plus one grayscale and one PNG to exercise the decoders)."""
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8).numpy()
                image = Image.fromarray(pixels).convert("L" if i == 1 else "RGB")
                image.save(os.path.join(root, split, c, f"{i}.png" if i == 2 else f"{i}.JPEG"))
    return str(root)


def break_file(path):
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return path


def test_val_transform_is_torchvision_resize_center_crop_pixel_for_pixel(tmp_path):
    import torchvision.transforms as T
    g = torch.Generator().manual_seed(0)
    for i, (w, h, mode) in enumerate(((500, 375, "RGB"), (333, 500, "L"), (257, 259, "CMYK"), (640, 427, "RGB"))):
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w),
                                                 mode="bicubic")  # photo-like: smooth areas and edges
        pixels = (smooth[0].permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).numpy()
        path = str(tmp_path / f"{i}.JPEG")
        Image.fromarray(pixels).convert(mode).save(path, quality=90)
        for resize, crop, how in ((232, 224, "bilinear"), (256, 224, "bilinear"), (36, 32, "bilinear"),
                                  (235, 224, "bicubic")):  # torchvision's V2 eval, ResNet's classic, timm's A3
            ours = data.val_transform(resize, crop, how)(open(path, "rb").read())
            mode_ = T.InterpolationMode(how)  # ImageFolder's loader, PIL's antialiased resize:
            theirs = T.Compose([T.Resize(resize, mode_), T.CenterCrop(crop), T.PILToTensor()])(
                Image.open(path).convert("RGB"))
            assert torch.equal(ours, theirs)


def full_decode_crop(path, box, size, interpolation="bilinear"):
    """torchvision's RandomResizedCrop on the full decode, for a given box, as a uint8 tensor."""
    import torchvision.transforms.v2.functional as TF
    left, top, w, h = box
    image = TF.pil_to_tensor(Image.open(path).convert("RGB"))
    return TF.resized_crop(image, top, left, h, w, [size, size], TF.InterpolationMode(interpolation), antialias=True)


@pytest.mark.parametrize("use_simplejpeg", [True, False], ids=["simplejpeg", "PIL"])
def test_worker_crops_match_a_full_decode_and_handle_modes(tmp_path, monkeypatch, use_simplejpeg):
    if use_simplejpeg and data.simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    if not use_simplejpeg:
        monkeypatch.setattr(data, "simplejpeg", None)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(0)),
                                             size=(300, 400), mode="bicubic")  # photo-like
    pixels = (smooth[0].permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).numpy()
    path = str(tmp_path / "big.JPEG")
    Image.fromarray(pixels).save(path, quality=95)
    raw = open(path, "rb").read()
    # A full decode: torchvision's RandomResizedCrop exactly. At 1/4 and 1/8 scale (the box on that grid, as the
    # loader snaps it), libjpeg's scaled IDCT stands in for the first part of the antialiased resize.
    for box, size, how, tolerance in (((50, 40, 200, 150), 180, "bilinear", 0), ((12, 20, 300, 252), 32, "bicubic", 1),
                                      ((24, 16, 360, 280), 32, "bilinear", 1.5)):
        ours = data.decode_crop_resize(raw, box, size, how)
        theirs = full_decode_crop(path, box, size, how)
        assert ours.shape == theirs.shape == (3, size, size) and ours.dtype == torch.uint8
        assert (ours.float() - theirs.float()).abs().mean() <= tolerance
    for mode, ext in (("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "png")):  # CMYK and PNG: PIL decodes them
        Image.fromarray(pixels).convert(mode).save(str(tmp_path / f"{mode}.{ext}"))
        out = data.RandomResizedCropFlip(32)(open(str(tmp_path / f"{mode}.{ext}"), "rb").read())
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    with pytest.raises(data.Unreadable):
        data.RandomResizedCropFlip(32)(b"\xff\xd8\xff\xe0 not a jpeg")


def test_crop_box_stays_inside_the_image():
    torch.manual_seed(0)
    for width, height in ((500, 375), (64, 640), (33, 33)):
        for _ in range(200):
            left, top, w, h = data.random_resized_crop_box(width, height)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0


def test_random_erasing_on_uint8_fills_with_the_mean():
    # torchvision's RandomErasing(value=0) comes after Normalize; on the uint8 image that zero is the mean colour.
    out = augment.RandomErasing(p=1.0)(torch.full((64, 3, 32, 32), 7, dtype=torch.uint8), torch.Generator())
    erased = (out != 7).any(1)
    assert out.dtype == torch.uint8 and erased.flatten(1).any(1).all() and not erased.flatten(1).all(1).any()
    mean = torch.tensor([round(255 * m) for m in data.IMAGENET_MEAN], dtype=torch.uint8)  # 124, 116, 104
    assert torch.equal(out.permute(0, 2, 3, 1)[erased], mean.expand(int(erased.sum()), 3))
    assert torch.equal(augment.RandomErasing(p=0.0)(out, torch.Generator()), out)


def test_sample_depends_only_on_seed_epoch_index(tmp_path):
    """Not on the number of workers, their lifetime, or the batch split: each (epoch, index) has its own seed."""
    root = make_image_folder(tmp_path / "d", train_per_class=8)
    _, samples, _ = data.scan_dataset(root)
    dataset = data.ImageList(samples, data.RandomResizedCropFlip(32), seed=3)

    def epoch_images(workers, batch, world):
        out = {}
        for rank in range(world):
            sampler = data.GlobalBatchSampler(len(dataset), batch, rank, world, seed=3)
            loader = data.make_loader(dataset, batch, sampler, workers, False, 32)
            for epoch in (0, 1):
                sampler.set_epoch(epoch)
                items = [item for item in sampler]
                images = torch.cat([b[0] for b in loader])
                out.update({item: image for item, image in zip(items, images)})
        return out

    a, b = epoch_images(0, 4, 1), epoch_images(2, 2, 2)
    assert set(a) == set(b) and len(a) == 32 and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[(0, 0, 0)], a[(1, 0, 0)])  # another epoch, another augmentation


def test_global_batches_do_not_depend_on_the_split_and_resume_mid_epoch():
    def steps(batch, world, start=0):
        per_rank = []
        for rank in range(world):
            sampler = data.GlobalBatchSampler(50, batch, rank, world, seed=1)
            sampler.set_epoch(2, start)
            items = [i for _, i, _ in sampler]
            per_rank.append([items[k:k + batch] for k in range(0, len(items), batch)])
        return [sorted(sum(step, [])) for step in zip(*per_rank)]
    assert steps(8, 1) == steps(4, 2) == steps(2, 4)  # 6 steps of the same 8 images whatever the split
    assert steps(4, 2, start=4) == steps(8, 1)[4:] and len(steps(8, 1)) == 6


def test_repeated_augmentation_spreads_copies_over_ranks_with_their_own_augmentation(tmp_path):
    samplers = [data.GlobalBatchSampler(16, 4, rank, 2, seed=0, reps=4) for rank in (0, 1)]
    items = [list(s) for s in samplers]
    assert all(len(i) == 8 for i in items)  # an epoch is still 16 images: 4 distinct, 4 copies each
    merged = [item for pair in zip(*items) for item in pair]  # the global order
    assert [k for _, _, k in merged] == [0, 1, 2, 3] * 4 and len({i for _, i, _ in merged}) == 4
    assert {i for _, i, _ in items[0]} == {i for _, i, _ in items[1]}  # each image's copies on both ranks
    root = make_image_folder(tmp_path / "d")
    _, samples, _ = data.scan_dataset(root)
    dataset = data.ImageList(samples, data.RandomResizedCropFlip(32, interpolation="bicubic"))
    assert not torch.equal(dataset[(0, 3, 0)][0], dataset[(0, 3, 1)][0])


def test_a3_recipe_trains_resumes_and_scores(tmp_path):
    """LAMB, BCE with a threshold, RandAugment, bicubic crops: through --max-steps, --resume auto and --eval-only."""
    root = make_image_folder(tmp_path / "d")
    common = ["--data", root, "--epochs", "2", "--recipe", "a3"] + TINY[4:] + ["--lr", "0.004"]
    run_train(common, tmp_path, "full")
    run_train(common + ["--max-steps", "2"], tmp_path, "part")
    metrics, out = run_train(common + ["--resume", "auto"], tmp_path, "part")
    a, b = load(str(tmp_path / "full" / "last.pt")), load(os.path.join(out, "last.pt"))
    assert a["step"] == b["step"] == 6 and same_weights(a, b) and a["ema"] is None
    assert "exp_avg_sq" in b["optimizer"]["state"][0] and b["config"]["opt"] == "lamb"
    assert math.isfinite(metrics["val_loss"])


def test_collate_keeps_the_batch_shape_and_weighs_bad_images_zero():
    good = (torch.full((3, 4, 4), 9, dtype=torch.uint8), 1, None)
    bad = (None, 0, ("unreadable", "x.JPEG (broken)"))
    images, labels, weights, problems = data.collate([bad, good, bad], size=4)
    assert images.shape == (3, 3, 4, 4) and weights.tolist() == [0, 1, 0] and labels.tolist() == [1, 1, 1]
    assert problems == [bad[2], bad[2]]
    images, labels, weights, _ = data.collate([bad, bad], size=4)  # nothing readable: the mean colour, weight 0
    assert images.shape == (2, 3, 4, 4) and weights.tolist() == [0, 0]


def test_decode_errors_are_skipped_io_and_transform_errors_are_not(tmp_path):
    root = make_image_folder(tmp_path / "d")
    broken = break_file(os.path.join(root, "train", "a", "0.JPEG"))
    folder = os.path.join(root, "train", "a", "dir.JPEG")  # reading it fails with an OSError: an I/O error
    os.makedirs(folder)
    dataset = data.ImageList([(broken, 0), (folder, 0)], data.RandomResizedCropFlip(32))
    assert folder not in [path for path, _ in data.list_images(os.path.join(root, "train"), ["a"])]  # not a file
    assert dataset[0][2][0] == "unreadable" and broken in dataset[0][2][1]
    assert dataset[1][2][0] == "io" and folder in dataset[1][2][1]
    good = os.path.join(root, "train", "b", "0.JPEG")
    failing = data.ImageList([(good, 0)], lambda raw: raw.not_a_method())  # a bug in a transform
    kind, message = failing[0][2]
    assert kind == "transform" and good in message and "AttributeError" in message and "test_model.py" in message


def test_demo_set_generation_is_deterministic(tmp_path):
    for name in ("one", "two"):
        demo.make_demo_dataset(str(tmp_path / name), train_per_class=2, val_per_class=1, size=32)
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "one")
                   for d, _, fs in os.walk(tmp_path / "one") for f in fs)
    assert len(files) == 10 * 3
    for f in files:
        assert open(tmp_path / "one" / f, "rb").read() == open(tmp_path / "two" / f, "rb").read()
    assert len(data.scan_dataset(str(tmp_path / "one"))[0]) == 10
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


# ---------------------------------------------------------------------------------------------------- train.py

def run_train(args, tmp_path, name="out"):
    out = str(tmp_path / name)
    return train.main(args + ["--output", out]), out


def load(path):
    return torch.load(path, weights_only=True)


def same_weights(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and \
        (a["ema"] is None or all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"]))


def torchrun(args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return cmd + args + ["--device", "cpu"]


def test_recipes_resolve_to_their_published_values(tmp_path, capsys):
    a3 = train.config.get_args(["--data", "x"])  # the default with --data: RSB A3 (arXiv 2110.00476, table 1)
    assert a3.recipe == "a3" and (a3.epochs, a3.opt, a3.lr * 2048 / 1024, a3.weight_decay) == (100, "lamb", 8e-3, 0.02)
    assert (a3.warmup_epochs, a3.decay, a3.loss, a3.bce_threshold, a3.label_smoothing) == (5, "cosine", "bce", 0.2, 0)
    assert (a3.mixup, a3.cutmix, a3.auto_augment, a3.ra_magnitude, a3.interpolation) == (0.1, 1.0, "ra", 6, "bicubic")
    assert (a3.train_res, a3.val_res, a3.val_resize) == (160, 224, math.floor(224 / 0.95))  # crop ratio 0.95
    assert not a3.ema and a3.random_erase == 0 and a3.ra_reps == 1 and a3.zero_init_residual  # timm: zero_init_last
    v2 = train.config.get_args(["--data", "x", "--recipe", "v2"])  # torchvision's ResNet50_Weights.IMAGENET1K_V2
    assert (v2.epochs, v2.opt, v2.lr, v2.weight_decay, v2.label_smoothing, v2.mixup, v2.cutmix) == \
        (600, "sgd", 0.5, 2e-5, 0.1, 0.2, 1.0)
    assert (v2.auto_augment, v2.random_erase, v2.train_res, v2.val_resize, v2.val_res) == \
        ("ta_wide", 0.1, 176, 232, 224)
    assert v2.ema and v2.ra_reps == 4 and v2.loss == "ce" and v2.warmup_epochs == 5
    assert v2.batch_size == 128 and v2.global_batch == 1024 and v2.lr * v2.global_batch / 1024 == 0.5  # 8 x 128
    assert train.config.get_args([]).recipe == "demo" and train.config.get_args([]).train_res == 48
    nette = train.config.get_args(["--data", "x", "--recipe", "nette5", "--lr", "3"])  # flags win over the recipe
    assert (nette.epochs, nette.batch_size, nette.lr, nette.decay, nette.min_scale) == (5, 64, 3.0, "linear", 1.0)
    out = tmp_path / "out"
    assert train.main(["--data", str(tmp_path / "nope"), "--output", str(out), "--dry-run"]) is None
    settings = json.loads(capsys.readouterr().out)
    assert settings["global_batch"] == 2048 and settings["peak_lr"] == pytest.approx(8e-3) and settings["opt"] == "lamb"
    assert settings["micro_batch"] == 256 and settings["accumulation_steps"] == 8  # A3's step on one GPU
    assert settings["val_interpolation"] == "bicubic" and settings["val_resize"] == 235  # timm's A3 eval
    assert not out.exists()  # nothing touched


def test_lr_schedule_warmup_middle_end():
    peak, total, warm = 0.4, 1000, 100
    assert train.lr_at(0, total, warm, peak) == pytest.approx(peak / warm)
    assert train.lr_at(warm - 1, total, warm, peak) == pytest.approx(peak)  # warmup ends at the peak
    assert train.lr_at(warm + (total - warm) // 2, total, warm, peak) == pytest.approx(peak / 2)
    assert train.lr_at(total - 1, total, warm, peak) == pytest.approx(0, abs=1e-5)
    assert train.lr_at(total, total, warm, peak) == 0
    assert train.lr_at(warm + (total - warm) // 4, total, warm, peak, "linear") == pytest.approx(0.75 * peak)
    assert train.lr_at(total, total, warm, peak, "linear") == 0


def test_end_to_end_checkpoints_metrics_and_torchvision_roundtrip(tmp_path):
    root = make_image_folder(tmp_path / "d")
    metrics, out = run_train(["--data", root, "--epochs", "2"] + TINY, tmp_path)
    assert metrics["val_images"] == 6 and 0 <= metrics["val_top1"] <= 100 and metrics["val_unreadable"] == 0
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("lr", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1", "img_per_s", "train_unreadable"):
        assert key in lines[-1]
    tv = torchvision.models.resnet50(num_classes=2)
    tv.load_state_dict(load(os.path.join(out, "model.pt")))  # strict, plain keys
    for name in ("last.pt", "best.pt"):
        ckpt = load(os.path.join(out, name))
        assert {"model", "optimizer", "scaler", "ema", "step", "samples", "config", "best_top1"} <= set(ckpt)
        tv.load_state_dict(ckpt["model"])
    assert load(os.path.join(out, "last.pt"))["samples"] == 6 * 4
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # atomic writes leave no temporary files
    result = train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "last.pt")] + TINY)
    assert result["val_images"] == 6 and "ema_top1" in result  # raw and EMA weights, no optimizer needed
    assert result["val_top1"] == lines[-1]["val_top1"] and result["ema_top1"] == lines[-1]["ema_top1"]
    result = train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "model.pt")] + TINY)
    assert result["val_images"] == 6 and "ema_top1" not in result
    shutil.rmtree(os.path.join(root, "train"))  # scoring needs only val
    assert train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "model.pt")] + TINY) == result


@pytest.mark.parametrize("stop_at", [3, 2], ids=["epoch-end", "mid-epoch"])
def test_max_steps_then_resume_equals_uninterrupted(tmp_path, stop_at):
    root = make_image_folder(tmp_path / "d")  # 12 images: 3 steps per epoch at batch 4
    common = ["--data", root, "--epochs", "2", "--model", "tv_resnet50"] + TINY
    run_train(common, tmp_path, "full")
    run_train(common + ["--max-steps", str(stop_at)], tmp_path, "part")
    part = load(str(tmp_path / "part" / "last.pt"))
    assert part["step"] == stop_at and part["samples"] == 4 * stop_at
    run_train(common + ["--resume", "auto"], tmp_path, "part")
    a, b = load(str(tmp_path / "full" / "last.pt")), load(str(tmp_path / "part" / "last.pt"))
    assert a["step"] == b["step"] == 6 and same_weights(a, b)
    lines = [json.loads(line) for line in open(tmp_path / "part" / "metrics.jsonl")]
    assert [m["epoch"] for m in lines] == [1, 2] and "train_loss" in lines[0]  # the validated epoch's line stays
    full = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert lines[0]["train_unreadable"] == full[0]["train_unreadable"] and \
        lines[0]["train_loss"] == pytest.approx(full[0]["train_loss"])  # epoch figures survive a mid-epoch stop
    metrics, out = run_train(common + ["--resume", str(tmp_path / "part" / "last.pt")], tmp_path, "elsewhere")
    assert load(os.path.join(out, "last.pt"))["step"] == 6 and os.path.exists(os.path.join(out, "model.pt"))


def test_resume_keeps_the_recipe_and_refuses_a_changed_flag(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    run_train(["--data", root, "--epochs", "2", "--weight-decay", "0.01", "--max-steps", "2"] + TINY, tmp_path)
    for flag, value, says in (("--lr", "0.1", "--lr 0.1 differs from 0.5"), ("--epochs", "3", "--epochs 3 differs"),
                              ("--global-batch", "8", "--global-batch 8 differs from 4")):
        args = ["--data", root, "--resume", "auto"] + TINY + [flag, value]
        with pytest.raises(SystemExit) as stop:
            run_train(args, tmp_path)
        assert stop.value.code == 2 and says in capsys.readouterr().err
    # Left out, the recipe comes from the checkpoint (--weight-decay 0.01, --epochs 2), and the run ends at step 6.
    metrics, out = run_train(["--data", root, "--resume", "auto", "--workers", "0", "--val-resize", "36",
                              "--val-res", "32", "--train-res", "32"], tmp_path)
    ckpt = load(os.path.join(out, "last.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["weight_decay"] == 0.01 and metrics["epoch"] == 2


def test_output_is_one_run_at_a_time(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pt.tmp-123").write_bytes(b"x" * 100)  # left by a killed save
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
                               str(out / "lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # another run holds OUTPUT
    with pytest.raises(SystemExit) as stop:
        run_train(["--data", root, "--epochs", "1"] + TINY, tmp_path)
    holder.kill()
    holder.wait()
    assert stop.value.code == 2 and "another run is using --output" in capsys.readouterr().err
    run_train(["--data", root, "--epochs", "1"] + TINY, tmp_path)
    assert not (out / "last.pt.tmp-123").exists()
    with pytest.raises(SystemExit) as stop:  # a fresh run into a folder that holds one
        run_train(["--data", root, "--epochs", "1"] + TINY, tmp_path)
    assert stop.value.code == 2 and "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "no_val", "empty_class", "class_mismatch", "bad_flag", "nan_flag",
                                  "val_resize", "workers", "not_a_checkpoint", "model_pt", "device", "seed",
                                  "eval_auto", "eval_classes"])
def test_bad_input_one_line_exit_2(tmp_path, capsys, case):
    root = tmp_path / "d"
    args = ["--data", str(root)] + TINY + ["--output", str(tmp_path / "out")]
    if case != "missing":
        make_image_folder(root)
    if case == "no_val":
        os.rename(root / "val", root / "validation")
    elif case == "empty_class":
        os.makedirs(root / "train" / "c")
        os.makedirs(root / "val" / "c")
    elif case == "class_mismatch":
        os.rename(root / "val" / "b", root / "val" / "z")
    elif case == "eval_classes":  # --eval-only reads only val: its class folders must match the weights
        shutil.copytree(root / "val" / "b", root / "val" / "c")
    extra = {"bad_flag": ["--epochs", "-1"], "nan_flag": ["--lr", "nan"], "val_resize": ["--val-resize", "30"],
             "workers": ["--workers", "100000"], "not_a_checkpoint": ["--resume", str(tmp_path / "junk.pt")],
             "model_pt": ["--resume", str(tmp_path / "model.pt")], "device": ["--device", "gpu"],
             "seed": ["--seed", str(2**64)], "eval_auto": ["--eval-only", "--resume", "auto"],
             "eval_classes": ["--eval-only", "--resume", str(tmp_path / "model.pt")]}.get(case, [])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save(model.resnet50(num_classes=2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as exit_info:
        train.main(args + extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    expected = {"missing": "not found", "no_val": "no val/", "empty_class": "empty class folder",
                "class_mismatch": "different classes", "bad_flag": "must be positive", "nan_flag": "finite number",
                "val_resize": "is below --val-res", "workers": "CPUs", "not_a_checkpoint": "cannot load",
                "model_pt": "not a training checkpoint", "device": "invalid choice", "seed": "below 2**63",
                "eval_auto": "no " + str(tmp_path / "out" / "last.pt") + " to score",
                "eval_classes": "size mismatch for fc.weight"}[case]
    assert expected in err[0]


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--data", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --data folder not found: {tmp_path / 'nope'}"


def test_unreadable_images_are_reported_skipped_and_counted(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    bad = break_file(os.path.join(root, "train", "a", "broken.JPEG"))
    bad_val = break_file(os.path.join(root, "val", "b", "0.JPEG"))
    metrics, _ = run_train(["--data", root, "--epochs", "2", "--max-unreadable", "0.2"] + TINY, tmp_path)
    assert metrics["epoch"] == 2 and metrics["val_images"] == 5 and metrics["val_unreadable"] == 1
    err = capsys.readouterr().err
    assert err.count(f"skipping unreadable image {bad}") == 1 and err.count(bad_val) == 1


def test_too_many_unreadable_or_unreadable_everything_stops(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    break_file(os.path.join(root, "train", "a", "0.JPEG"))
    with pytest.raises(SystemExit) as stop:  # 1 of 12 is above the default 1%
        run_train(["--data", root, "--epochs", "1"] + TINY, tmp_path)
    assert stop.value.code == 2 and "more than --max-unreadable 0.01" in capsys.readouterr().err
    for f in os.listdir(os.path.join(root, "train", "a")) + os.listdir(os.path.join(root, "train", "b")):
        for c in ("a", "b"):
            if os.path.exists(os.path.join(root, "train", c, f)):
                break_file(os.path.join(root, "train", c, f))
    with pytest.raises(SystemExit) as stop:
        run_train(["--data", root, "--epochs", "1", "--max-unreadable", "1"] + TINY, tmp_path, "out2")
    assert stop.value.code == 2 and "nothing to train on" in capsys.readouterr().err.splitlines()[-1]


def test_io_error_stops_with_one_line_after_saving(tmp_path, capsys, monkeypatch):
    root = make_image_folder(tmp_path / "d")
    failing = os.path.join(root, "train", "a", "3.JPEG")

    def open_(path, *args):  # a dropped network mount: reading this one file fails
        if path == failing:
            raise OSError(5, "Input/output error")
        return open(path, *args)
    monkeypatch.setattr(data, "open", open_, raising=False)
    with pytest.raises(SystemExit) as stop:
        run_train(["--data", root, "--epochs", "2", "--max-unreadable", "1"] + TINY, tmp_path)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "cannot read" in err and failing in err and "Traceback" not in err
    assert "stopped on a data error" in err and os.path.exists(tmp_path / "out" / "last.pt")


def test_synthetic_data_runs(tmp_path, capsys):
    run_train(["--data", "synthetic", "--epochs", "1", "--no-ema", "--max-steps", "3"] + TINY, tmp_path)
    assert load(str(tmp_path / "out" / "last.pt"))["step"] == 3  # 100 steps an epoch, no validation set
    assert "stopped at --max-steps 3" in capsys.readouterr().out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    _, out = run_train(["--data", root, "--epochs", "3", "--max-steps", "3"] + TINY, tmp_path)
    good = open(os.path.join(out, "last.pt"), "rb").read()
    checkpoint = load(os.path.join(out, "last.pt"))
    checkpoint["config"]["lr"] = 1e30  # the same run, made to diverge
    runtime.save_checkpoint(checkpoint, os.path.join(out, "last.pt"))
    good = open(os.path.join(out, "last.pt"), "rb").read()
    with pytest.raises(SystemExit) as exit_info:
        run_train(["--data", root, "--resume", "auto"] + TINY[:-6] + ["--log-every", "1"], tmp_path)
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert ("loss is nan" in err or "loss is inf" in err) and "lr" in err and "step" in err
    assert open(os.path.join(out, "last.pt"), "rb").read() == good


def test_nan_weights_are_never_saved():
    net = model.resnet18(num_classes=2)
    runtime.check_finite([net], step=7)
    with torch.no_grad():
        net.fc.weight[0, 0] = float("nan")
    with pytest.raises(runtime.UserError) as error:
        runtime.check_finite([net], step=7)
    assert error.value.code == 3


def test_only_the_models_buffers_on_the_device_reach_a_collective(monkeypatch):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = train.EMA(net, 0.9)
    sent = []
    monkeypatch.setattr(runtime.dist, "broadcast", lambda tensor, src: sent.append(tensor))
    runtime.broadcast_buffers([net, ema.module], torch.device("cpu"))
    buffers = list(net.buffers()) + list(ema.module.buffers())
    assert len(sent) == len(buffers) == 6 and all(any(s is b for b in buffers) for s in sent)
    with pytest.raises(RuntimeError, match="cannot join a collective"):  # e.g. a CPU tensor in an NCCL run
        runtime.broadcast_buffers([net], torch.device("meta"))


def test_ema_is_torchvisions_average_without_a_host_sync():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ours, theirs = train.EMA(net, 0.9), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(3):
        net(torch.randn(2, 3, 8, 8)).sum().backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
        ours.update(net, copy_only=step == 0)  # AveragedModel copies on its first update
        theirs.update_parameters(net)
    a, b = ours.module.state_dict(), theirs.module.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float()) for k in a if a[k].is_floating_point())
    ours.update(net, copy_only=True)  # the warmup: the EMA follows the weights
    assert all(torch.equal(x, y) for x, y in zip(ours.module.state_dict().values(), net.state_dict().values()))


def test_every_signal_torchrun_forwards_stops_the_run_cleanly():
    stop = runtime.StopRequested()
    try:
        for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGTERM):
            os.kill(os.getpid(), signum)
            assert stop.signum == signum
    finally:
        for signum in runtime.STOP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)


def test_time_based_checkpoint_records_position_mid_epoch(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d")  # 12 images: 3 steps per epoch at batch 4
    saved = []
    original = train.save_checkpoint
    def record(obj, path):
        saved.append((os.path.basename(path), obj.get("step")))
        original(obj, path)
    monkeypatch.setattr(train, "save_checkpoint", record)
    run_train(["--data", root, "--epochs", "1", "--save-every-min", "1e-9", "--no-ema"] + TINY, tmp_path)
    assert ("last.pt", 1) in saved and ("last.pt", 2) in saved and ("last.pt", 3) in saved


# ------------------------------------------------------------------------- distributed, preemption, crash safety

RECORD_RANK_WEIGHTS = """
import sys, torch
sys.path.insert(0, {here!r})
import train
original = train.save_last
def save_last(args, d, t):  # every rank also dumps its own weights, to compare them
    original(args, d, t)
    torch.save(t.raw.state_dict(), f"{{args.output}}/rank{{d.rank}}.pt")
train.save_last = save_last
train.main(sys.argv[1:])
"""


def test_torchrun_two_process_gloo_job_with_a_rank_of_unreadable_batches(tmp_path):
    """Half the training files are broken: each is replaced by another file's image of weight 0, every rank takes
    every step with a full batch, the gradient all-reduces pair up, and the job ends."""
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), train_per_class=8, val_per_class=3)
    for i in (1, 3, 5, 7):  # half of each class
        for c in ("a", "b", "c"):
            break_file(os.path.join(root, "train", c, f"{i}.JPEG"))
    out = str(tmp_path / "out")
    script = tmp_path / "run_ddp.py"
    script.write_text(RECORD_RANK_WEIGHTS.format(here=HERE))
    cmd = torchrun([str(script), "--data", root, "--epochs", "2", "--output", out, "--max-unreadable", "1"] + TINY)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # both ranks hold identical weights
    assert result.stdout.count("done:") == 1 and "(DDP)" in result.stdout
    final = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][-1]
    assert final["val_images"] == 9 and final["train_unreadable"] == 12  # 9 val images over 2 ranks: no duplicates
    single = train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "last.pt")] + TINY)
    assert single["val_images"] == 9 and single["val_top1"] == final["val_top1"]
    assert single["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)


def test_torchrun_world_of_one_takes_the_ddp_path(tmp_path):
    root = make_image_folder(tmp_path / "d")
    cmd = torchrun([os.path.join(HERE, "train.py"), "--data", root, "--epochs", "1", "--output",
                    str(tmp_path / "out")] + TINY, nproc=1)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0 and "1 process(es) on cpu (DDP)" in result.stdout, result.stderr[-3000:]


def test_accumulation_on_one_process_equals_two_processes(tmp_path):
    """A global batch of 8 as 1 process x 2 micro-batches of 4 and as 2 processes x 1: the same images in the same
    BatchNorm groups, the same device augmentation and mixing draws: the same weights, to float rounding."""
    root = make_image_folder(tmp_path / "d", train_per_class=8)  # 16 images: 2 steps an epoch
    common = ["--data", root, "--epochs", "1", "--recipe", "v2", "--batch-size", "4", "--global-batch", "8"] + TINY[8:]
    one = subprocess.run([sys.executable, os.path.join(HERE, "train.py")] + common +
                         ["--output", str(tmp_path / "one"), "--device", "cpu"], capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert one.returncode == 0 and "global batch 8 = 4 x 2 micro-batches x 1" in one.stdout, one.stderr[-3000:]
    two = subprocess.run(torchrun([os.path.join(HERE, "train.py")] + common + ["--output", str(tmp_path / "two")]),
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0 and "global batch 8 = 4 x 1 micro-batches x 2" in two.stdout, two.stderr[-3000:]
    a, b = load(str(tmp_path / "one" / "last.pt")), load(str(tmp_path / "two" / "last.pt"))
    assert a["step"] == b["step"] == 2
    for key in a["model"]:  # BatchNorm's running statistics move once a forward: per micro-batch, unlike weights
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5)


def sigterm_at(cmd, line_start, group=False, delay=0.0):
    """Start cmd, send SIGTERM when a line starts with line_start (to the whole process group if group)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith(line_start):
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
            break
    output = proc.communicate(timeout=180)[0]
    return proc.returncode, output


@pytest.mark.parametrize("procs", [1, 2])
def test_sigterm_mid_epoch_with_workers_then_resume_is_bit_identical(tmp_path, procs):
    """The path users run: loader workers (persistent, seeded once by torch), SIGTERM to the whole process group as
    SLURM sends it, --resume auto; with one process (V2's parts) and with two ranks under torchrun (A3's parts, and
    repeated augmentation, whose copies of an image go to different ranks)."""
    root = make_image_folder(tmp_path / "d", train_per_class=16)  # 32 images: 4 steps per epoch at global batch 8
    common = ["--data", root, "--epochs", "2"] + TINY + ["--workers", "2", "--log-every", "1", "--global-batch", "8"]
    # one process: 2 micro-batches of 4 a step (accumulation); two: one of 4 each
    if procs == 2:
        common += ["--opt", "lamb", "--loss", "bce", "--auto-augment", "ra", "--interpolation", "bicubic",
                   "--ra-reps", "2"]
    launch = (lambda a: torchrun([os.path.join(HERE, "train.py")] + a, nproc=2)) if procs == 2 else \
        (lambda a: [sys.executable, os.path.join(HERE, "train.py")] + a)
    full = subprocess.run(launch(common + ["--output", str(tmp_path / "full")]), capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    code, output = sigterm_at(launch(common + ["--output", str(tmp_path / "part")]), "epoch 1/2 step 2/4", group=True)
    assert "stopped by signal 15" in output and "DataLoader worker" not in output, output
    assert f'File "{HERE}' not in output  # no traceback from our code (torchrun prints its own on SIGTERM)
    assert code == 128 + signal.SIGTERM or procs == 2 and code != 0, output
    part = load(str(tmp_path / "part" / "last.pt"))
    assert 2 <= part["step"] <= 4 and part["samples"] == 8 * part["step"]
    resumed = subprocess.run(launch(common + ["--output", str(tmp_path / "part"), "--resume", "auto"]),
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load(str(tmp_path / "full" / "last.pt")), load(str(tmp_path / "part" / "last.pt"))
    assert a["step"] == b["step"] == 8 and same_weights(a, b)


KILL_IN_VALIDATION = """
import os, signal, sys
sys.path.insert(0, {here!r})
import train
def evaluate(*args):
    os.kill(os.getpid(), signal.SIGKILL)  # the hard kill after torchrun's grace, in the middle of validation
train.evaluate = evaluate
train.main(sys.argv[1:])
"""


def test_epoch_is_saved_before_validation_and_validated_on_resume(tmp_path):
    root = make_image_folder(tmp_path / "d")
    script = tmp_path / "kill_in_validation.py"
    script.write_text(KILL_IN_VALIDATION.format(here=HERE))
    args = ["--data", root, "--epochs", "2", "--output", str(tmp_path / "out")] + TINY
    result = subprocess.run([sys.executable, str(script)] + args, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert load(str(tmp_path / "out" / "last.pt"))["step"] == 3  # the trained epoch survived
    metrics, out = run_train(args[:-2] + ["--resume", "auto"], tmp_path)
    assert [json.loads(line)["epoch"] for line in open(os.path.join(out, "metrics.jsonl"))] == [1, 2]


EVALUATE_SLOWLY = """
import sys, time
sys.path.insert(0, {here!r})
import train
def evaluate_slowly(net, loader, *args):
    for batch in loader:  # the loader workers are running now
        print("evaluating", flush=True)
        time.sleep(120)
train.evaluate = evaluate_slowly
train.main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_ends_eval_only_at_once(tmp_path, signum):
    """--eval-only has nothing to save, so Ctrl-C or SIGTERM to the process group (loader workers included) must end
    it at once, workers too, not be noted and ignored until the whole val set is done."""
    root = make_image_folder(tmp_path / "d")
    weights = str(tmp_path / "model.pt")
    torch.save(model.resnet50(num_classes=2).state_dict(), weights)
    script = tmp_path / "evaluate_slowly.py"
    script.write_text(EVALUATE_SLOWLY.format(here=HERE))
    cmd = [sys.executable, str(script), "--data", root, "--eval-only", "--resume", weights] + TINY + ["--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("evaluating"):
            os.killpg(proc.pid, signum)
            break
    stderr = proc.communicate(timeout=60)[1]  # evaluate_slowly would take 120 s: only the signal ends it sooner
    assert proc.returncode == -signum, stderr[-3000:]  # killed by the signal itself, as Ctrl-C kills any CLI tool
    for _ in range(100):  # the workers notice their main process is gone within a few seconds
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("loader workers still running 20 s after their main process ended")


SAVE_FOREVER = """
import os, sys, torch
sys.path.insert(0, {here!r})
import runtime
for version in range(10**9):
    runtime.save_checkpoint({{"pid": os.getpid(), "version": version, "weights": torch.full((4_000_000,),
                            float(version))}}, {path!r})
"""


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "last.pt")
    script = tmp_path / "save_forever.py"
    script.write_text(SAVE_FOREVER.format(here=HERE, path=path))
    kills_mid_save = 0
    for delay in (0.05, 0.13, 0.21, 0.37, 0.53):  # kill at different moments, most of them inside a save
        proc = subprocess.Popen([sys.executable, str(script)])
        deadline = time.time() + 120
        while not (os.path.exists(path) and load(path)["pid"] == proc.pid) and time.time() < deadline:
            time.sleep(0.05)  # wait for this process's first complete save, however slow the machine
        time.sleep(delay)
        proc.kill()
        proc.wait()
        kills_mid_save += any(".tmp-" in f for f in os.listdir(tmp_path))
        ckpt = load(path)
        assert torch.all(ckpt["weights"] == ckpt["version"])
        for f in os.listdir(tmp_path):  # a killed save leaves its temporary file; the next run's start removes it
            if ".tmp-" in f:
                os.remove(os.path.join(tmp_path, f))
    assert kills_mid_save >= 1  # the kill did land inside a save at least once


def test_unwritable_output_is_reported_before_training(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", root, "--output", str(tmp_path / "file" / "out")] + TINY)
    assert exit_info.value.code == 2 and "cannot write to --output" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- bench.py

def test_bench_reference_rate_reads_end_to_end_step_time():
    """The reference's "img/s" leaves out the wait for data; bench.py reports batch / "time" (which includes it)."""
    import bench
    line = ("Epoch: [0]  [{:>2}/66]  eta: 0:00:09  lr: 0.1  img/s: {}  loss: 6.9 (6.9)  acc1: 0.0 (0.0)  time: {}  "
            "data: 0.01")
    log = "\n".join([line.format(0, 100.0, 9.0), line.format(10, 3000.0, 0.2), line.format(20, 2000.0, 0.1),
                     "Epoch: [0] Total time: 0:00:09", "Test:  Total time: 0:00:01", "Training time 0:00:12"])
    rate, own = bench.reference_rate(log, 256, skip_prints=1)
    assert rate == pytest.approx(256 * 2 / 0.3) and own == pytest.approx(2500.0)


def test_bench_jpeg_rows_on_cpu(tmp_path):
    """The real-JPEG section end to end on tiny data: the loader alone and the training step on its batches."""
    import argparse
    import bench
    images = os.path.join(make_image_folder(tmp_path / "d"), "train")  # 12 files, one PNG and one grayscale per class
    args = argparse.Namespace(images=images, workers=1, res=[32], batch=4, steps=2, warmup=1, repeat=0,
                              link_dir=str(tmp_path / "links"))
    assert bench.jpeg_plan(args) == (2, 10, 5)  # 12 steps x 4 images over 12 files: 4 copies, plus one
    rows = bench.bench_jpeg(args, torch.device("cpu"))
    assert [r["data"] for r in rows] == ["JPEG, 1 workers, loader alone", "JPEG, 1 workers"]
    assert all(float(r["img/s"]) > 0 for r in rows)


def test_bench_pipeline_on_an_imagenet_layout_folder(tmp_path):
    """`bench.py pipeline` (and jpeg) given DATA rather than DATA/train: a worker's rows, the device augmentation's
    time and the augmentation statistics (the peers' A3 row needs timm: absent here, it says so)."""
    root = make_image_folder(tmp_path / "d")
    result = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "pipeline", "--images", root, "--rounds",
                             "1", "--threads", "1"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one worker, 12 files" in result.stdout and "torchvision V2 preset" in result.stdout
    assert "TrivialAugmentWide + erasing" in result.stdout and "ours (batched)" in result.stdout


# ---- data tools (issue 54)

def run_data_tool(argv, capsys):
    """data.main in this process: (exit code, stdout, stderr)."""
    try:
        data.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_names_truncated_and_text_files_and_counts_cmyk_grayscale_png_inside(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")  # per class: 1.JPEG grayscale, 2.png a PNG (named so)
    truncated = os.path.join(root, "train", "a", "0.JPEG")
    raw = open(truncated, "rb").read()
    open(truncated, "wb").write(raw[:len(raw) // 2])  # what an interrupted copy leaves
    text = os.path.join(root, "train", "b", "notes.JPEG")
    open(text, "w").write("not an image")
    Image.new("CMYK", (24, 16), (10, 20, 30, 40)).save(os.path.join(root, "train", "a", "cmyk.JPEG"))
    Image.new("RGB", (24, 16)).save(os.path.join(root, "val", "a", "png.JPEG"), format="PNG")  # as in ImageNet
    open(os.path.join(root, "train", "a", "._1.JPEG"), "wb").write(b"\0\5\26\7 AppleDouble")  # hidden: not data
    code, out, err = run_data_tool(["verify", root], capsys)
    assert code == 2 and err.strip().endswith("files cannot be read (listed above): training skips them, up to "
                                              "--max-unreadable; remove or replace them")
    assert "train: 14 files in 2 classes, 2 unreadable, 1 CMYK, 2 grayscale, 0 not JPEG inside" in out
    assert "val: 7 files in 2 classes, 0 unreadable, 0 CMYK, 2 grayscale, 1 not JPEG inside" in out
    unreadable = [line for line in out.splitlines() if line.startswith("unreadable:")]
    assert len(unreadable) == 2 and truncated in unreadable[0] and "truncated" in unreadable[0]
    assert text in unreadable[1] and "cannot identify image file" in unreadable[1]
    assert "verify: 21/21 files" in err and "ETA 0:00:00" in err
    # verify's 1/8-scale decode fails where both loaders do: the training crop and validation's full decode
    assert data.ImageList([(truncated, 0)], data.RandomResizedCropFlip(32))[0][2][0] == "unreadable"
    with pytest.raises(data.Unreadable, match="truncated"):
        data.val_transform(36, 32)(open(truncated, "rb").read())
    for path in (truncated, text):
        os.remove(path)
    assert run_data_tool(["verify", root], capsys)[0] == 0


def flat_val(folder, count):
    os.makedirs(folder)
    for i in range(1, count + 1):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(os.path.join(folder, f"ILSVRC2012_val_{i:08d}.JPEG"))
    open(os.path.join(folder, ".DS_Store"), "wb").write(b"Bud1")
    return str(folder)


def tree(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_sort_val_from_kaggle_csv_checks_every_label_first_and_runs_once(tmp_path, capsys):
    val, labels = flat_val(tmp_path / "val", 4), tmp_path / "LOC_val_solution.csv"
    rows = ["ILSVRC2012_val_00000001,n01440764 1 2 30 40 n01440764 5 6 7 8",  # the wnid, then boxes
            "ILSVRC2012_val_00000002,n02102040 1 2 3 4", "ILSVRC2012_val_00000003,n01440764 9 9 20 20"]
    labels.write_text("\n".join(["ImageId,PredictionString"] + rows) + "\n")
    before = tree(val)
    code, _, err = run_data_tool(["sort-val", val, "--labels", os.path.join(val, ".DS_Store")], capsys)
    assert code == 2 and err.startswith("error: ") and "LOC_val_solution.csv" in err and err.count("\n") == 1
    code, _, err = run_data_tool(["sort-val", val, "--labels", str(labels)], capsys)
    assert code == 2 and "1 of 4 images" in err and "ILSVRC2012_val_00000004.JPEG" in err and "nothing moved" in err
    assert tree(val) == before
    labels.write_text("\n".join(["ImageId,PredictionString"] + rows + ["ILSVRC2012_val_00000004,n02102040 1 1 2 2"]))
    code, out, _ = run_data_tool(["sort-val", val, "--labels", str(labels)], capsys)
    assert code == 0 and "moved 4 images into 2 class folders" in out
    after = tree(val)
    assert after == [".DS_Store", "n01440764/ILSVRC2012_val_00000001.JPEG", "n01440764/ILSVRC2012_val_00000003.JPEG",
                     "n02102040/ILSVRC2012_val_00000002.JPEG", "n02102040/ILSVRC2012_val_00000004.JPEG"]
    code, out, _ = run_data_tool(["sort-val", val, "--labels", str(labels)], capsys)
    assert code == 0 and "already sorted" in out and tree(val) == after


def test_sort_val_from_the_devkit_archive_and_without_scipy(tmp_path, capsys, monkeypatch):
    import tarfile
    val, devkit = flat_val(tmp_path / "val", 3), str(tmp_path / "ILSVRC2012_devkit_t12.tar.gz")

    def add(tar, name, payload):
        info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    with monkeypatch.context() as m:  # no scipy: one line saying how to get it, nothing moved
        m.setitem(sys.modules, "scipy.io", None)
        with tarfile.open(devkit, "w:gz") as tar:
            add(tar, "ILSVRC2012_validation_ground_truth.txt", b"2\n1\n2\n")
        code, _, err = run_data_tool(["sort-val", val, "--labels", devkit], capsys)
        assert code == 2 and err == "error: the devkit's meta.mat needs scipy: pip install scipy (or use Kaggle's " \
                                    "LOC_val_solution.csv)\n" and len(tree(val)) == 4
    scipy_io = pytest.importorskip("scipy.io")
    import numpy
    synsets = numpy.array([(1, "n01440764"), (2, "n02102040"), (1001, "n00001740")],  # 1001+: not a leaf, never a label
                          dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    meta = io.BytesIO()
    scipy_io.savemat(meta, {"synsets": synsets})
    with tarfile.open(devkit, "w:gz") as tar:
        add(tar, "meta.mat", meta.getvalue())
        add(tar, "ILSVRC2012_validation_ground_truth.txt", b"2\n1\n2\n")
    code, out, _ = run_data_tool(["sort-val", val, "--labels", devkit], capsys)
    assert code == 0 and "moved 3 images into 2 class folders" in out
    assert tree(val) == [".DS_Store", "n01440764/ILSVRC2012_val_00000002.JPEG",
                         "n02102040/ILSVRC2012_val_00000001.JPEG", "n02102040/ILSVRC2012_val_00000003.JPEG"]


def test_hidden_files_and_folders_are_not_data_and_nested_images_are_counted_once(tmp_path, capsys, monkeypatch):
    root = make_image_folder(tmp_path / "d")
    junk = {"train/.ipynb_checkpoints/0.JPEG": b"", "train/a/._0.JPEG": b"\0\5\26\7", "train/a/.DS_Store": b"Bud1",
            "val/.DS_Store": b"Bud1", "train/a/.cache/0.JPEG": b"", "train/a/extra/x.JPEG": b"",
            "train/a/extra/deeper/y.png": b"", "train/b/more/z.JPEG": b"", "train/b/more/._z.JPEG": b""}
    for name, payload in junk.items():
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        open(os.path.join(root, name), "wb").write(payload)
    classes, train_samples, val_samples = data.scan_dataset(root)
    assert classes == ["a", "b"] and len(train_samples) == 12 and len(val_samples) == 6
    assert not [p for p, _ in train_samples + val_samples if "/." in p]
    err = capsys.readouterr().err
    assert err == f"note: 3 images in subfolders of class folders in {root}/train are not read (only " \
                  f"{root}/train/<class>/<image>)\n"
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 says it
    data.scan_dataset(root)
    assert capsys.readouterr().err == ""
    code, out, _ = run_data_tool([root], capsys)  # `python data.py DATA` still counts; a bad folder exits 2
    assert code == 0 and out == f"{root}: 2 classes, 12 train images, 6 val images\n"
    code, _, err = run_data_tool([str(tmp_path / "nope")], capsys)
    assert code == 2 and err == f"error: --data folder not found: {tmp_path / 'nope'}\n"


# ---- issue 53: the real path, second pass (GPU- and cluster-only paths as unit tests of their guards)

FAST = TINY + ["--model", "resnet18", "--no-ema"]  # the same tiny set-up, a smaller model where the model is no point


def i53_run(args, tmp_path, name="out"):
    """train.main in this process: (exit code, the run's folder)."""
    try:
        run_train(args, tmp_path, name)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, str(tmp_path / name)


def test_i53_resumed_optimizer_state_takes_each_parameters_layout():
    """Item 1: load_state_dict keeps a momentum buffer's saved strides, and CUDA's fused SGD refuses buffers whose
    strides differ from the parameter's (only a GPU shows the error: here, the layouts, and that the step is the
    same as the unfused one's)."""
    import copy
    torch.manual_seed(0)
    saved = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)  # trained with --channels-last
    opt = torch.optim.SGD(saved.parameters(), lr=0.1, momentum=0.9)
    saved(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    state, x = opt.state_dict(), torch.randn(2, 3, 8, 8)
    weights, layouts = [], []
    for fused, fix in ((False, False), (True, False), (True, True)):  # resumed with --no-channels-last
        conv = torch.nn.Conv2d(3, 8, 3)
        conv.load_state_dict(saved.state_dict())
        resumed = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9, fused=fused)
        resumed.load_state_dict(copy.deepcopy(state))  # its tensors themselves would be stepped in place
        if fix:
            runtime.state_like_params(resumed)
        layouts.append(resumed.state[conv.weight]["momentum_buffer"].stride() == conv.weight.stride())
        conv(x).sum().backward()
        resumed.step()
        weights.append(conv.weight.detach().clone())
    assert layouts == [False, False, True] and torch.allclose(weights[0], weights[2])


def test_i53_resume_that_changes_channels_last_restores_buffers_in_the_new_layout(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d")
    common = ["--data", root, "--epochs", "1"] + FAST
    assert i53_run(common + ["--channels-last", "--max-steps", "1"], tmp_path)[0] == 0
    layouts, original = [], train.restore

    def restore(args, t, ckpt):
        original(args, t, ckpt)
        layouts.extend(t.optimizer.state[p]["momentum_buffer"].stride() == p.stride() for p in t.raw.parameters())
    monkeypatch.setattr(train, "restore", restore)
    code, out = i53_run(common + ["--no-channels-last", "--resume", "auto", "--max-steps", "2"], tmp_path)
    assert code == 0 and len(layouts) == len(list(model.resnet18().parameters())) and all(layouts)


HOLD_LOCK = """
import sys, time
sys.path.insert(0, {here!r})
import runtime
lock = runtime.claim_output(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_output(tmp_path, folder, seconds, env=None):
    script = tmp_path / "hold_lock.py"
    script.write_text(HOLD_LOCK.format(here=HERE))
    holder = subprocess.Popen([sys.executable, str(script), folder, str(seconds)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_i53_output_lock_names_its_holder_and_a_requeued_job_waits_for_it(tmp_path, monkeypatch, capsys):
    """Item 2: the refusal names host, pid and SLURM job; a requeued job (SLURM_RESTART_COUNT) waits and retries."""
    import socket
    folder = str(tmp_path / "out")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    holder = hold_output(tmp_path, folder, 600, {"SLURM_JOB_ID": "4242"})
    try:
        with pytest.raises(runtime.UserError) as refused:
            runtime.claim_output(folder)
        assert f"host {socket.gethostname()} pid {holder.pid} SLURM job 4242 holds" in str(refused.value)
        assert "another run is using --output" in str(refused.value)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: waits, then still refuses, naming the wait
        tick = time.monotonic()
        with pytest.raises(runtime.UserError, match="still after 0.6 s"):
            runtime.claim_output(folder, requeue_wait_s=0.6, poll_s=0.2)
        assert time.monotonic() - tick >= 0.6 and "a requeued job waits up to 0.6 s" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    holder = hold_output(tmp_path, folder, 1.5)  # freed while the requeued job waits: it goes on
    lock = runtime.claim_output(folder, requeue_wait_s=60, poll_s=0.2)
    holder.wait()
    assert open(os.path.join(folder, "lock")).read() == f"host {socket.gethostname()} pid {os.getpid()}\n"
    lock.close()


def test_i53_output_on_a_file_system_without_locks_goes_on_with_a_warning(tmp_path, monkeypatch, capsys):
    import errno

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without its lock manager; Lustre noflock: ENOSYS
    monkeypatch.setattr(runtime.fcntl, "lockf", no_locks)
    lock = runtime.claim_output(str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: --output" in err and "without POSIX locks (ENOLCK)" in err
    lock.close()
    monkeypatch.setattr(runtime.fcntl, "lockf", lambda *args: (_ for _ in ()).throw(OSError(errno.EBADF, "Bad fd")))
    with pytest.raises(runtime.UserError, match="cannot lock --output"):  # any other error still stops
        runtime.claim_output(str(tmp_path / "out2"))


def test_i53_nan_on_one_rank_stops_every_rank_together(monkeypatch):
    """Item 3: check_finite makes one all-reduce on every rank, so a rank whose (EMA) BatchNorm statistics went NaN
    and the ranks whose did not exit together, rather than one alone."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    d, calls = runtime.Dist(0, 2, torch.device("cpu"), True), []

    def other_rank_has_nan(tensor, op):
        calls.append(op)
        tensor.fill_(0.0)  # MIN with the other rank's 0
    monkeypatch.setattr(runtime.dist, "all_reduce", other_rank_has_nan)
    with pytest.raises(runtime.UserError) as error:
        runtime.check_finite([net], 5, d)  # this rank's weights are finite
    assert error.value.code == 3 and calls == [runtime.dist.ReduceOp.MIN]
    monkeypatch.setattr(runtime.dist, "all_reduce", lambda tensor, op: calls.append(op))
    net[1].running_var.fill_(float("nan"))  # this rank's own: it still joins the all-reduce before it raises
    with pytest.raises(runtime.UserError):
        runtime.check_finite([net], 5, d)
    assert len(calls) == 2


def test_i53_process_group_timeout_covers_the_longest_save(monkeypatch):
    """Item 4: the other ranks wait in a collective while rank 0 saves: NCCL's default 10 minutes is too short."""
    import datetime
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda backend, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(runtime.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(runtime.dist, "get_world_size", lambda: 1)
    assert runtime.setup_distributed("cpu").distributed
    assert seen["timeout"] >= datetime.timedelta(minutes=30)


@pytest.mark.parametrize("device, flags, says", [
    ("cuda", ["--sync-bn", "--compile"], "--compile with --sync-bn"),
    ("cpu", ["--sync-bn"], "--sync-bn needs CUDA GPUs")])
def test_i53_sync_bn_pairs_that_cannot_run_are_refused(device, flags, says):
    """Items 6 and 8 as units: under DDP only (one process ignores --sync-bn)."""
    args = train.config.get_args(["--data", "x"] + flags)
    train.config.check_platform(args, device, distributed=False)
    with pytest.raises(runtime.UserError, match=says):
        train.config.check_platform(args, device, distributed=True)
    train.config.check_platform(train.config.get_args(["--data", "x", "--compile"]), "cuda", distributed=True)


def test_i53_sync_bn_on_cpu_under_torchrun_is_one_line(tmp_path):
    """Item 8 as users meet it: before, a traceback from DDP's constructor on every rank."""
    root = make_image_folder(tmp_path / "d")
    cmd = torchrun([os.path.join(HERE, "train.py"), "--data", root, "--epochs", "1", "--sync-bn", "--output",
                    str(tmp_path / "out")] + FAST, nproc=1)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode != 0 and "error: --sync-bn needs CUDA GPUs" in result.stderr, result.stderr[-3000:]
    assert f'File "{HERE}' not in result.stderr and not (tmp_path / "out").exists()


SLOW_WORKERS = """
import sys, time
sys.path.insert(0, {here!r})
import data, train
crop = data.RandomResizedCropFlip.__call__
def slow_crop(self, raw):  # the main process waits for data: a killed worker still owes batches
    time.sleep(0.15)
    return crop(self, raw)
data.RandomResizedCropFlip.__call__ = slow_crop
train.main(sys.argv[1:])
"""


def test_i53_killed_loader_worker_saves_the_position_and_resume_is_exact(tmp_path):
    """Item 9: SIGKILL to a loader worker (the OOM killer's way) mid-epoch: one line naming the likely cause and
    --workers, last.pt at the last step done, exit 2; --resume auto then ends bit-identical to a run without it."""
    root = make_image_folder(tmp_path / "d", train_per_class=20)  # 40 images: 10 steps
    script = tmp_path / "slow_workers.py"
    script.write_text(SLOW_WORKERS.format(here=HERE))
    common = [sys.executable, str(script), "--data", root, "--epochs", "1"] + FAST + ["--workers", "2",
                                                                                       "--log-every", "1"]
    full = subprocess.run(common + ["--output", str(tmp_path / "full")], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(common + ["--output", str(tmp_path / "part")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:
        if line.startswith("epoch 1/1 step 2/10"):
            workers = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
            assert len(workers) == 2
            os.kill(int(workers[0]), signal.SIGKILL)
            break
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith((f"error: DataLoader worker (pid(s) {workers[0]}) exited unexpectedly",
                                "error: a loader worker stopped answering (ConnectionResetError"))  # as it lands
    assert "try fewer --workers (this run: 2)" in lines[0]
    assert "out-of-memory" in lines[0] and lines[0].endswith("--workers 1 --resume auto")
    part = load(str(tmp_path / "part" / "last.pt"))
    assert 2 <= part["step"] < 10 and f"at step {part['step']}" in lines[0]
    resumed = subprocess.run(common + ["--output", str(tmp_path / "part"), "--resume", "auto"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load(str(tmp_path / "full" / "last.pt")), load(str(tmp_path / "part" / "last.pt"))
    assert a["step"] == b["step"] == 10 and same_weights(a, b)


def test_i53_loader_worker_errors_are_recognised_and_others_are_not():
    assert runtime.loader_worker_lost(RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed. "), 4) \
        .startswith("DataLoader worker (pid 7) is killed by signal: Killed: most likely the out-of-memory killer")
    assert runtime.loader_worker_lost(RuntimeError("CUDA out of memory"), 4) is None
    assert "stopped answering (ConnectionResetError" in runtime.loader_worker_lost(ConnectionResetError(104, "x"), 2)
    assert runtime.loader_worker_lost(ConnectionResetError(104, "x"), 0) is None  # no workers: not theirs
    with pytest.raises(runtime.UserError, match="try fewer --workers"):  # validation's loader: one line too
        with runtime.loader_deaths_as_errors(4):
            raise RuntimeError("DataLoader worker (pid(s) 7) exited unexpectedly")
    with pytest.raises(ValueError):
        with runtime.loader_deaths_as_errors(4):
            raise ValueError("a bug stays a traceback")


def test_i53_files_deleted_after_the_scan_stop_after_saving(tmp_path, capsys, monkeypatch):
    """Item 10: an I/O error stops the run as a data error, saved first; it is not counted as unreadable (which made
    --max-unreadable raise before the save)."""
    root = make_image_folder(tmp_path / "d")
    victim, scan = os.path.join(root, "train", "a", "3.JPEG"), data.scan_dataset

    def scan_then_delete(*args, **kwargs):
        found = scan(*args, **kwargs)
        os.remove(victim)
        return found
    monkeypatch.setattr(data, "scan_dataset", scan_then_delete)
    code, out = i53_run(["--data", root, "--epochs", "1"] + FAST, tmp_path)  # --max-unreadable 0.01: 1 of 12 is more
    err = capsys.readouterr().err
    assert code == 2 and f"cannot read {victim}" in err and "more than --max-unreadable" not in err
    assert "stopped on a data error (the line above); saved" in err and os.path.exists(os.path.join(out, "last.pt"))


def test_i53_too_many_unreadable_saves_first_and_counts_in_whole_numbers(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    break_file(os.path.join(root, "train", "a", "0.JPEG"))
    open(os.path.join(root, "train", "a", "3.JPEG"), "wb").write(b"no image at all")
    code, out = i53_run(["--data", root, "--epochs", "1", "--max-unreadable", "0.1"] + FAST, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: 2 training images of 12 unreadable in this epoch, more than "
                                            "--max-unreadable 0.1: check the data (the warnings above); saved")
    assert all(line.startswith("warning: skipping unreadable image") for line in err[:-1])
    assert "3.JPEG (UnidentifiedImageError: cannot identify image file: not an image PIL reads)" in " ".join(err)
    assert "BytesIO" not in " ".join(err) and load(os.path.join(out, "last.pt"))["step"] >= 1


def test_i53_eval_only_on_synthetic_data_is_one_line(tmp_path, capsys):
    """Item 12."""
    torch.save(model.resnet18(num_classes=1000).state_dict(), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", "synthetic", "--eval-only", "--resume", str(tmp_path / "model.pt"), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "--data synthetic has no validation images" in err[0]


def test_i53_val_has_the_same_unreadable_limit_as_training(tmp_path, capsys):
    """Item 14: half of val unreadable stopped nothing; best.pt was picked on the other half."""
    root = make_image_folder(tmp_path / "d")
    for c in ("a", "b"):
        break_file(os.path.join(root, "val", c, "0.JPEG"))  # 2 of 6
    code, out = i53_run(["--data", root, "--epochs", "1", "--max-unreadable", "0.2"] + FAST, tmp_path)
    err = capsys.readouterr().err
    assert code == 2 and "error: 2 of 6 validation images unreadable, more than --max-unreadable 0.2" in err
    assert os.path.exists(os.path.join(out, "last.pt")) and not os.path.exists(os.path.join(out, "best.pt"))
    assert open(os.path.join(out, "metrics.jsonl")).read() == ""  # the epoch is not done: a resume validates it
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "last.pt")] + FAST)
    assert stop.value.code == 2 and "2 of 6 validation images unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["workers", "output_file", "recipe_limit", "no_data", "truncated", "pickled", "text",
                                  "other_model", "other_classes"])
def test_i53_messages_say_what_is_wrong_in_one_line(tmp_path, capsys, case):
    """Item 15: each of these printed something misleading (a wrong CPU count, 'File exists', 'Invalid argument',
    colour codes, a 300-character key dump); now one line that names the cause, exit 2."""
    root = make_image_folder(tmp_path / "d")
    (tmp_path / "file").write_text("not a folder")
    good = tmp_path / "good.pt"
    if case in ("truncated", "pickled", "text", "other_model", "other_classes"):
        torch.save(model.resnet18(num_classes=2).state_dict(), good)
    weights = {"truncated": tmp_path / "cut.pt", "pickled": tmp_path / "module.pt", "text": tmp_path / "notes.pt",
               "other_model": good, "other_classes": good}.get(case)
    if case == "truncated":
        weights.write_bytes(good.read_bytes()[:-100])  # a copy cut short
    elif case == "pickled":
        torch.save(torch.nn.Linear(2, 2), weights)
    elif case == "text":
        weights.write_text("hello\n")
    elif case == "other_classes":
        shutil.copytree(root + "/val/b", root + "/val/c")
    extra = {"workers": ["--workers", "-1"], "output_file": ["--output", str(tmp_path / "file")],
             "no_data": ["--data", str(tmp_path / "nope")],
             "other_model": ["--model", "resnet50"], "other_classes": ["--model", "resnet18"]}.get(case, [])
    args = ["--data", root] + TINY + ["--output", str(tmp_path / "out" / "run")] + extra
    if case == "recipe_limit":  # TINY gives --warmup-epochs: here it is the recipe's
        args = ["--data", root, "--recipe", "nette5", "--epochs", "1"]
    if weights is not None:
        args += ["--eval-only", "--resume", str(weights)]
    with pytest.raises(SystemExit) as stop:
        train.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "\x1b" not in err[0] and len(err[0]) < 300, err
    expected = {"workers": "--workers must not be negative, got -1", "output_file": "is a file, not a folder",
                "recipe_limit": "--warmup-epochs 2 (from --recipe nette5) exceeds --epochs 1",
                "no_data": "--data folder not found",
                "truncated": "the file is truncated or corrupt", "pickled": "pickled Python object "
                "(torch.nn.modules.linear.Linear)", "text": "not a PyTorch checkpoint (6 bytes)",
                "other_model": "these are not weights of --model resnet50: ",
                "other_classes": "size mismatch for fc.weight: the weights score 2 classes, --data has 3"}[case]
    assert expected in err[0], err[0]
    assert not (tmp_path / "out").exists()  # a run that fails before training leaves no folders (nor lock) behind


def test_i53_max_steps_stop_prints_a_command_that_continues(tmp_path, capsys):
    """Item 16: 'the same command plus --resume auto' stopped again at once at --max-steps."""
    import shlex
    root = make_image_folder(tmp_path / "d")
    assert i53_run(["--data", root, "--epochs", "1", "--max-steps", "1"] + FAST, tmp_path)[0] == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("stopped at --max-steps 1")][0]
    words = shlex.split(line.split("continue with: ")[1])
    assert words[:2] == ["python", "train.py"] and "--max-steps" not in words and words[-2:] == ["--resume", "auto"]
    metrics = train.main(words[2:])
    assert metrics["epoch"] == 1 and load(str(tmp_path / "out" / "last.pt"))["step"] == 3


def test_i53_divergence_prints_a_fresh_run_that_is_accepted(tmp_path, capsys):
    """Item 16: after exit 3, 'Try a lower --lr' could not be followed (resume refuses a new --lr, a fresh run the
    folder). Now the line holds a command that starts over with half the --lr in a new folder, the checkpoint's
    recipe written out."""
    import shlex
    root = make_image_folder(tmp_path / "d")
    _, out = i53_run(["--data", root, "--epochs", "3", "--max-steps", "2"] + FAST, tmp_path)
    checkpoint = load(os.path.join(out, "last.pt"))
    checkpoint["config"]["lr"] = 1e30  # the same run, made to diverge
    runtime.save_checkpoint(checkpoint, os.path.join(out, "last.pt"))
    code, _ = i53_run(["--data", root, "--resume", "auto", "--workers", "0", "--log-every", "1"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and "A resumed run keeps its --lr" in err[0]
    words = shlex.split(err[0].split("`")[1])
    assert "--resume" not in words and words[words.index("--lr") + 1] == "5e+29"
    assert words[words.index("--output") + 1] == out + "-lr5e+29" and words[words.index("--epochs") + 1] == "3"
    assert "--no-ema" in words and words[words.index("--model") + 1] == "resnet18"
    code, fresh = i53_run(words[2:-2] + ["--max-steps", "2"], tmp_path, "out-lr5e+29")
    err = capsys.readouterr().err
    assert code in (0, 3) and os.path.isdir(fresh) and "differs from" not in err  # it trains (and may diverge again)


STOP_IN_VALIDATION = """
import sys, time
sys.path.insert(0, {here!r})
import data, train
to_device = data.to_device_normalized
def slow(*args):  # only validation uses it: each val batch takes a second
    print("validating", flush=True)
    time.sleep(1)
    return to_device(*args)
data.to_device_normalized = slow
train.main(sys.argv[1:])
"""


def test_i53_stop_signal_during_validation_exits_within_seconds(tmp_path):
    """Item 17: the epoch is saved before validation; a stop then ends it at the next batch, with no training step
    after it, and the resumed run validates that epoch."""
    root = make_image_folder(tmp_path / "d", val_per_class=20)  # 40 val images: 10 batches, 10 s
    script = tmp_path / "stop_in_validation.py"
    script.write_text(STOP_IN_VALIDATION.format(here=HERE))
    args = ["--data", root, "--epochs", "2", "--output", str(tmp_path / "out")] + FAST
    tick = time.monotonic()
    code, output = sigterm_at([sys.executable, str(script)] + args, "validating")
    assert code == 128 + signal.SIGTERM and "stopped by signal 15; saved" in output, output
    assert time.monotonic() - tick < 60 and output.count("validating") <= 2 and "epoch 2/2" not in output
    assert load(str(tmp_path / "out" / "last.pt"))["step"] == 3
    metrics, out = run_train(["--data", root, "--epochs", "2"] + FAST + ["--resume", "auto"], tmp_path)
    assert [json.loads(line)["epoch"] for line in open(os.path.join(out, "metrics.jsonl"))] == [1, 2]


# ---- run record, TensorBoard, --init-from (issue 54)

I54 = TINY + ["--model", "resnet18"]  # the tiny set-up with a small model and the EMA on (v2's)


def read_runs(out):
    with open(os.path.join(out, "run.json")) as f:
        return json.load(f)["runs"]


def git_head():
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def test_i54_run_json_records_the_start_and_a_resume_appends_its_own(tmp_path, capsys):
    import datetime
    import platform
    import socket
    import PIL
    root = make_image_folder(tmp_path / "d")
    out = str(tmp_path / "out")
    args = ["--data", root, "--epochs", "2"] + FAST
    assert train.main(args + ["--output", out, "--dry-run"]) is None
    dry = json.loads(capsys.readouterr().out)
    assert i53_run(args + ["--max-steps", "2"], tmp_path)[0] == 0
    [first] = read_runs(out)
    assert first["argv"][1:] == args + ["--max-steps", "2", "--output", out] and first["world"] == 1
    assert first["hosts"] == [socket.gethostname()] and first["devices"][0].startswith("cpu")
    when = datetime.datetime.fromisoformat(first["time"])
    assert when.utcoffset() == datetime.timedelta(0) and abs(datetime.datetime.now(datetime.timezone.utc) - when) < \
        datetime.timedelta(minutes=10)
    versions = first["versions"]
    assert (versions["python"], versions["torch"], versions["torchvision"], versions["pillow"]) == \
        (platform.python_version(), torch.__version__, torchvision.__version__, PIL.__version__)
    assert versions["cuda"] == torch.version.cuda and {"cudnn", "nccl"} <= set(versions)
    if git_head() is not None:  # the commit of the code that ran (git_dirty: whatever this checkout holds now)
        assert first["git_commit"] == git_head() and isinstance(first["git_dirty"], bool)
    # The settings are --dry-run's, with what only a start resolves (amp and channels_last on this device).
    settings = first["settings"]
    assert set(settings) == set(dry) and settings["init_from"] is None and settings["tensorboard"] is False
    assert {k: v for k, v in settings.items() if dry[k] != v} == {"amp": "off", "channels_last": False,
                                                                    "max_steps": 2}
    assert i53_run(["--data", root, "--resume", "auto"] + FAST, tmp_path)[0] == 0
    runs = read_runs(out)
    assert len(runs) == 2 and runs[0] == first  # the first start's entry stays as it was
    assert runs[1]["settings"]["resume"] == os.path.join(out, "last.pt") and "--resume" in runs[1]["argv"]
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_i54_run_record_gathers_every_rank_and_survives_a_bad_file(tmp_path, monkeypatch, capsys):
    gathered = []

    def all_gather_object(box, mine):  # what dist's gives two ranks: every rank's object, in rank order
        gathered.append(mine)
        box[:] = [mine, ("node-2", "NVIDIA H100")]
    monkeypatch.setattr(runtime.dist, "all_gather_object", all_gather_object)
    cpu = torch.device("cpu")
    runtime.record_run(str(tmp_path), {"lr": 0.5}, ["train.py"], runtime.Dist(1, 2, cpu, True))
    assert len(gathered) == 1 and not os.path.exists(tmp_path / "run.json")  # rank 1 joins the collective only
    (tmp_path / "run.json").write_text("{not json")
    runtime.record_run(str(tmp_path), {"lr": 0.5}, ["train.py"], runtime.Dist(0, 2, cpu, True))
    [entry] = read_runs(tmp_path)
    assert entry["world"] == 2 and entry["hosts"][1] == "node-2" and entry["devices"][1] == "NVIDIA H100"
    assert entry["settings"] == {"lr": 0.5} and (tmp_path / "run.json.unreadable").read_text() == "{not json"
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert runtime.git_state(str(tmp_path)) == {}  # not a git checkout: no git fields
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert runtime.git_state(HERE) == {}


def test_i54_tensorboard_holds_the_progress_lines_and_each_epochs_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root = make_image_folder(tmp_path / "d")
    metrics, out = run_train(["--data", root, "--epochs", "2", "--tensorboard"] + I54, tmp_path)
    events = EventAccumulator(os.path.join(out, "tb"))
    events.Reload()
    shown = {}  # global step -> (loss, lr) as the progress lines print them
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("epoch ") and " step " in line:
            words = line.split()
            epoch, step = int(words[1].split("/")[0]), int(words[3].split("/")[0])
            shown[(epoch - 1) * 3 + step] = (float(words[5]), float(words[7]))
    loss, lr = events.Scalars("train/loss"), events.Scalars("train/lr")
    assert [e.step for e in loss] == sorted(shown) and len(shown) >= 3
    assert all(shown[e.step][0] == pytest.approx(e.value, abs=1e-4) for e in loss)
    assert all(shown[e.step][1] == pytest.approx(e.value, rel=1e-3) for e in lr)
    for tag in ("img_per_s", "data_wait_share", "unreadable"):
        assert [e.step for e in events.Scalars(f"train/{tag}")] == sorted(shown)
    assert all(0 <= e.value <= 1 for e in events.Scalars("train/data_wait_share"))
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    for name in ("val_top1", "val_top5", "val_loss", "ema_top1", "ema_top5", "ema_loss", "train_loss",
                 "train_unreadable", "img_per_s", "data_wait_share", "lr"):
        got = events.Scalars(f"epoch/{name}")
        assert [e.step for e in got] == [1, 2], name  # x: the epoch
        assert [e.value for e in got] == pytest.approx([m[name] for m in lines], rel=1e-5), name


def test_i54_tensorboard_after_a_kill_shows_each_step_once(tmp_path):
    """A run killed after logging step 5 but before saving it resumes from step 4: the killed run's step 5 is
    hidden (purge_step), the resumed run's shows."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root = make_image_folder(tmp_path / "d")
    args, out = ["--data", root, "--epochs", "2", "--tensorboard"] + FAST + ["--log-every", "1"], tmp_path / "out"
    run_train(args + ["--max-steps", "4"], tmp_path)
    shutil.copyfile(out / "last.pt", tmp_path / "step4.pt")
    run_train(args + ["--resume", "auto", "--max-steps", "5"], tmp_path)
    shutil.copyfile(tmp_path / "step4.pt", out / "last.pt")  # as if killed after step 5's line, before its save
    run_train(args + ["--resume", "auto"], tmp_path)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert len(os.listdir(out / "tb")) == 3  # one event file per start
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [1, 2]


def test_i54_tensorboard_missing_is_one_line_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails, as without the package
    root = make_image_folder(tmp_path / "d")
    code, out = i53_run(["--data", root, "--epochs", "1", "--max-steps", "1", "--tensorboard"] + FAST, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and err == ["warning: --tensorboard needs the tensorboard package: pip install tensorboard"]
    assert load(os.path.join(out, "last.pt"))["step"] == 1 and not os.path.exists(os.path.join(out, "tb"))
    assert runtime.Scalars(None).add("train", 1, {"loss": 1.0}) is None  # off: a no-op, without the import


@pytest.fixture(scope="module")
def i54_source(tmp_path_factory):
    """One finished tiny run (2 classes, EMA on) whose files the --init-from tests start from; they never write
    into it."""
    tmp = tmp_path_factory.mktemp("i54")
    root = make_image_folder(tmp / "d")
    train.main(["--data", root, "--epochs", "1", "--output", str(tmp / "src")] + I54)
    return root, str(tmp / "src")


def start_of(argv, monkeypatch):
    """train.main up to the first step: the trainer it would train (its run.json is written)."""
    started = []
    monkeypatch.setattr(train, "train", lambda args, d, t, loaders, tb: started.append(t))
    train.main(argv)
    return started[0]


def test_i54_init_from_model_pt_and_last_pt_starts_a_new_run_from_their_weights(i54_source, tmp_path, monkeypatch,
                                                                                capsys):
    root, src = i54_source
    last = load(os.path.join(src, "last.pt"))
    for name, weights in (("model.pt", load(os.path.join(src, "model.pt"))), ("last.pt", last["model"])):
        out = str(tmp_path / name)
        t = start_of(["--data", root, "--epochs", "2", "--init-from", os.path.join(src, name), "--output", out] + I54,
                     monkeypatch)
        assert t.step == 0 and not t.optimizer.state and t.total_steps == 6  # a fresh optimiser and schedule
        for module in (t.raw, t.ema.module):  # the EMA starts from the loaded weights too
            assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items())
        assert read_runs(out)[0]["settings"]["init_from"] == os.path.join(src, name)
    assert not all(torch.equal(last["model"][k], last["ema"][k]) for k in last["model"])  # last.pt: the raw weights
    assert "fc:" not in capsys.readouterr().out  # the same classes: nothing to say


def test_i54_init_from_trains_and_its_stop_line_continues_without_it(i54_source, tmp_path, capsys):
    import shlex
    root, src = i54_source
    args = ["--data", root, "--epochs", "2", "--init-from", os.path.join(src, "last.pt")] + I54 + ["--lr", "0.25"]
    assert i53_run(args + ["--max-steps", "4"], tmp_path)[0] == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("stopped at --max-steps 4")][0]
    words = shlex.split(line.split("continue with: ")[1])
    assert "--init-from" not in words and words[-2:] == ["--resume", "auto"]  # --resume refuses --init-from
    assert train.main(words[2:])["epoch"] == 2
    out = str(tmp_path / "out")
    assert load(os.path.join(out, "last.pt"))["step"] == 6  # counted from 0, not from the source's step 3
    runs = read_runs(out)
    assert [r["settings"]["init_from"] for r in runs] == [os.path.join(src, "last.pt"), None]


def test_i54_init_from_with_another_class_count_starts_fc_anew(i54_source, tmp_path, monkeypatch, capsys):
    _, src = i54_source
    three = make_image_folder(tmp_path / "d3", classes=("a", "b", "c"))
    source = load(os.path.join(src, "model.pt"))
    common = ["--data", three, "--epochs", "1"] + I54
    fresh = start_of(common + ["--output", str(tmp_path / "fresh")], monkeypatch).raw.state_dict()
    capsys.readouterr()
    t = start_of(common + ["--init-from", os.path.join(src, "model.pt"), "--output", str(tmp_path / "new")],
                 monkeypatch)
    out = capsys.readouterr().out.splitlines()
    said = [x for x in out if x.startswith("fc:")]
    assert said == ["fc: checkpoint has 2 classes, --data has 3: fc initialised anew"]
    state = t.raw.state_dict()
    assert state["fc.weight"].shape == (3, 512) and all(torch.equal(state[k], fresh[k]) for k in ("fc.weight",
                                                                                                   "fc.bias"))
    assert all(torch.equal(v, source[k]) for k, v in state.items() if not k.startswith("fc."))
    assert all(torch.equal(v, state[k]) for k, v in t.ema.module.state_dict().items())


@pytest.mark.parametrize("case", ["model", "resume", "missing", "classes", "lr"])
def test_i54_init_from_refusals_and_the_messages_that_point_to_it(i54_source, tmp_path, capsys, case):
    root, src = i54_source
    model_pt, last = os.path.join(src, "model.pt"), os.path.join(src, "last.pt")
    three = make_image_folder(tmp_path / "d3", classes="abc") if case == "classes" else None
    argv, says = {
        "model": (["--data", root, "--init-from", model_pt, "--model", "resnet34"] + TINY, "not weights of --model "
                  "resnet34"),
        "resume": (["--data", root, "--init-from", model_pt, "--resume", "auto"] + I54, "give one of them"),
        "missing": (["--data", root, "--init-from", str(tmp_path / "nope.pt")] + I54, "--init-from: no such file"),
        "classes": (["--data", three, "--resume", last] + I54,
                    f"start a new run with --init-from {last}"),
        "lr": (["--data", root, "--resume", last] + I54 + ["--lr", "0.1"], f"with another --lr, start a new run from "
               f"them: --init-from {last}"),
    }[case]
    code, out = i53_run(argv, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not os.path.exists(os.path.join(out, "run.json"))  # no run started


def test_i54_divergence_offers_the_last_good_weights_with_init_from(i54_source):
    import shlex
    root, src = i54_source
    args = train.config.get_args(["--data", root, "--epochs", "1", "--output", src] + I54)
    args.resume = os.path.join(src, "last.pt")
    advice = train.config.after_divergence(args)
    assert "A resumed run keeps its --lr" in advice
    words = shlex.split(advice.split("`")[3])  # the second command: from the last good weights
    assert words[words.index("--init-from") + 1] == os.path.join(src, "last.pt") and "--resume" not in words
    assert words[words.index("--lr") + 1] == "0.25" and words[words.index("--output") + 1] == src + "-lr0.25"
    assert train.config.get_args(words[2:]).init_from == os.path.join(src, "last.pt")  # a command that is accepted
