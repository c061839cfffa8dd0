"""The whole test suite: model, init, augment, data, train and bench, on the CPU with small data the tests make.

Needs torch, torchvision, pillow and pytest (requirements.txt). Nothing here reads ../shared or the network.

    python -m pytest test_model.py            # the whole suite, a few minutes on 2 CPU cores
    python -m pytest test_model.py -k mixup   # one part
"""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import augment
import init
import model


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


# ------------------------------------------------------------------------------------------- data.py, train.py

import json
import os
import signal
import subprocess
import sys
import time

from PIL import Image

import data
import train

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--batch-size", "4", "--train-res", "32", "--val-res", "32", "--val-resize", "36", "--workers", "0",
        "--warmup-epochs", "0.5", "--lr", "0.5", "--log-every", "2"]


def make_image_folder(root, classes=("a", "b"), train_per_class=6, val_per_class=3, size=40, seed=0):
    """A tiny ImageNet-layout set of random JPEGs (plus one grayscale and one PNG to exercise the decoders)."""
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (size, size + 8, 3), generator=g, dtype=torch.uint8).numpy()
                image = Image.fromarray(pixels)
                if i == 1:
                    image = image.convert("L")
                name = f"{i}.png" if i == 2 else f"{i}.JPEG"
                image.save(os.path.join(root, split, c, name))
    return str(root)


def run_train(args, tmp_path, name="out"):
    out = str(tmp_path / name)
    return train.main(args + ["--output", out]), out


def test_lr_schedule_warmup_middle_end():
    peak, total, warm = 0.4, 1000, 100
    assert train.lr_at(0, total, warm, peak) == pytest.approx(peak / warm)
    assert train.lr_at(warm - 1, total, warm, peak) == pytest.approx(peak)  # warmup ends at the peak
    assert train.lr_at(warm, total, warm, peak) == pytest.approx(peak)
    assert train.lr_at(warm + (total - warm) // 2, total, warm, peak) == pytest.approx(peak / 2)
    assert train.lr_at(total - 1, total, warm, peak) == pytest.approx(0, abs=1e-5)
    assert train.lr_at(total, total, warm, peak) == 0
    assert train.lr_at(warm - 1, total, warm, peak, "linear") == pytest.approx(peak)  # the same warmup
    assert train.lr_at(warm + (total - warm) // 4, total, warm, peak, "linear") == pytest.approx(0.75 * peak)
    assert train.lr_at(total, total, warm, peak, "linear") == 0
    flat_end = warm + 3 * (total - warm) // 4  # flat-cos: the peak for 75% of the steps after warmup, then a cosine
    assert train.lr_at(warm - 1, total, warm, peak, "flat-cos") == pytest.approx(peak)
    assert train.lr_at(flat_end, total, warm, peak, "flat-cos") == pytest.approx(peak)
    assert train.lr_at((flat_end + total) // 2, total, warm, peak, "flat-cos") == pytest.approx(peak / 2, rel=1e-2)
    assert train.lr_at(total, total, warm, peak, "flat-cos") == 0


def test_end_to_end_checkpoints_metrics_and_torchvision_roundtrip(tmp_path):
    root = make_image_folder(tmp_path / "d")
    metrics, out = run_train(["--data", root, "--epochs", "2"] + TINY, tmp_path)
    assert metrics["val_images"] == 6 and 0 <= metrics["val_top1"] <= 100
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "ema_top1", "img_per_s", "epoch_time_s"):
        assert key in lines[-1]
    tv = torchvision.models.resnet50(num_classes=2)
    tv.load_state_dict(torch.load(os.path.join(out, "model.pt"), weights_only=True))  # strict, plain keys
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(os.path.join(out, name), weights_only=True)
        assert {"model", "optimizer", "scaler", "ema", "epoch", "step", "best_top1", "config", "rng"} <= set(ckpt)
        tv.load_state_dict(ckpt["model"])
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # atomic writes leave no temporary files
    result = train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "model.pt")] + TINY)
    assert result["images"] == 6


@pytest.mark.parametrize("opt", ["sgd", "ranger"])  # ranger: Lookahead's slow weights must come back too
def test_resume_after_epoch_equals_uninterrupted(tmp_path, opt):
    root = make_image_folder(tmp_path / "d")
    common = ["--data", root, "--epochs", "2", "--model", "tv_resnet50", "--opt", opt] + TINY
    run_train(common, tmp_path, "full")
    run_train(common + ["--max-steps", "3"], tmp_path, "part")  # 3 steps = one epoch of 12 images at batch 4
    run_train(common + ["--resume", "auto"], tmp_path, "part")
    a = torch.load(str(tmp_path / "full" / "last.pt"), weights_only=True)
    b = torch.load(str(tmp_path / "part" / "last.pt"), weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_adamw_decouples_weight_decay_and_spares_batchnorm():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    args = train.get_args(["--data", "x", "--opt", "adamw", "--weight-decay", "0.05"])
    optimizer = train.build_optimizer(args, net, peak_lr=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves the weights
    optimizer.step()
    conv_w, conv_b, bn_w, bn_b = [p.detach() for p in net.parameters()]
    assert torch.allclose(conv_w, before[0] * (1 - 0.1 * 0.05))  # decoupled: w <- w (1 - lr wd)
    assert all(torch.equal(p, q) for p, q in zip((conv_b, bn_w, bn_b), before[1:]))


def test_ranger_is_radam_with_lookahead_every_k_steps():
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    args = train.get_args(["--data", "x", "--opt", "ranger", "--weight-decay", "0.01"])
    net, fast = make(), make()
    ranger = train.build_optimizer(args, net, peak_lr=0.01)
    radam = torch.optim.RAdam([{"params": [p for p in fast.parameters() if p.ndim > 1], "weight_decay": 0.01},
                               {"params": [p for p in fast.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                              lr=0.01, betas=(0.9, 0.99), eps=1e-6, decoupled_weight_decay=True)
    start = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 2, (8,))
    for step in range(6):
        for m, opt in ((net, ranger), (fast, radam)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        if step < 5:  # between syncs Ranger is RAdam
            assert all(torch.equal(p, q) for p, q in zip(net.parameters(), fast.parameters()))
    for p, q, w0 in zip(net.parameters(), fast.parameters(), start):  # step 6: halfway from the start to the fast weights
        assert torch.allclose(p, w0 + 0.5 * (q - w0), atol=1e-7) and torch.equal(ranger.state[p]["slow"], p)
    again = train.build_optimizer(args, make(), peak_lr=0.01)
    again.load_state_dict(ranger.state_dict())  # the slow weights travel in the optimizer's state_dict
    for p, q in zip(again.param_groups[0]["params"], ranger.param_groups[0]["params"]):
        assert torch.equal(again.state[p]["slow"], ranger.state[q]["slow"])


def test_adamw_run_resumes_and_refuses_another_optimizer(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    common = ["--data", root, "--epochs", "2", "--model", "tv_resnet50", "--weight-decay", "0.01"]
    run_train(common + ["--opt", "adamw", "--max-steps", "3"] + TINY, tmp_path, "part")
    with pytest.raises(SystemExit) as stop:
        run_train(common + ["--opt", "sgd", "--resume", "auto"] + TINY, tmp_path, "part")
    assert stop.value.code == 2 and "trained with --opt adamw, not --opt sgd" in capsys.readouterr().err
    metrics, out = run_train(common + ["--opt", "adamw", "--resume", "auto"] + TINY, tmp_path, "part")
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["step"] == 6 and "exp_avg_sq" in ckpt["optimizer"]["state"][0] and math.isfinite(metrics["val_loss"])


@pytest.mark.parametrize("case", ["missing", "no_val", "empty_class", "class_mismatch", "bad_flag", "not_a_checkpoint"])
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
    elif case == "bad_flag":
        args += ["--epochs", "-1"]
    elif case == "not_a_checkpoint":
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        args += ["--resume", str(tmp_path / "junk.pt")]
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    expected = {"missing": "not found", "no_val": "no val/", "empty_class": "empty class folder",
                "class_mismatch": "different classes", "bad_flag": "must be positive",
                "not_a_checkpoint": "cannot load"}[case]
    assert expected in err[-1]


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--data", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --data folder not found: {tmp_path / 'nope'}"


def test_unreadable_image_is_reported_once_and_skipped(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    bad = os.path.join(root, "train", "a", "broken.JPEG")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    metrics, _ = run_train(["--data", root, "--epochs", "2"] + TINY, tmp_path)
    assert metrics["epoch"] == 2
    err = capsys.readouterr().err
    assert err.count("skipping unreadable image") == 1 and bad in err


def test_synthetic_data_runs(tmp_path):
    metrics, _ = run_train(["--data", "synthetic", "--epochs", "1", "--max-steps", "2", "--no-ema"] + TINY, tmp_path)
    assert metrics["epoch"] == 1 and math.isfinite(metrics["train_loss"])


def test_demo_set_generation_is_deterministic(tmp_path):
    for name in ("one", "two"):
        data.make_demo_dataset(str(tmp_path / name), train_per_class=2, val_per_class=1, size=32)
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "one")
                   for d, _, fs in os.walk(tmp_path / "one") for f in fs)
    assert len(files) == 10 * 3 + 1
    for f in files:
        assert open(tmp_path / "one" / f, "rb").read() == open(tmp_path / "two" / f, "rb").read()
    assert len(data.scan_dataset(str(tmp_path / "one"))[0]) == 10


def test_fast_crops_match_a_full_decode_and_handle_modes(tmp_path):
    pixels = torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy()
    path = str(tmp_path / "big.JPEG")
    Image.fromarray(pixels).save(path, quality=95)
    out = data.FastRandomResizedCrop(32)(Image.open(path))  # small output: decodes at 1/4 or 1/8 scale
    assert out.size == (32, 32) and out.mode == "RGB"
    # With the draft scale forced off, the fast crop equals torchvision's crop + resize on the full decode.
    box = (50, 40, 200, 150)
    fast = data.decode_crop_resize(Image.open(path), box, (180, 140))
    full = Image.open(path).convert("RGB").resize((180, 140), Image.BILINEAR, box=(50, 40, 250, 190))
    assert fast.tobytes() == full.tobytes()
    for mode in ("L", "CMYK"):
        Image.fromarray(pixels).convert(mode).save(str(tmp_path / f"{mode}.JPEG"))
        image = data.FastResizeCenterCrop(36, 32)(Image.open(str(tmp_path / f"{mode}.JPEG")))
        assert image.size == (32, 32) and image.mode == "RGB"


def test_crop_box_stays_inside_the_image():
    torch.manual_seed(0)
    for width, height in ((500, 375), (64, 640), (33, 33)):
        for _ in range(200):
            left, top, w, h = data.random_resized_crop_box(width, height)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0


def test_random_erasing_on_uint8_fills_with_the_mean():
    # torchvision's RandomErasing(value=0) comes after Normalize; on the uint8 image that zero is the mean colour.
    torch.manual_seed(0)
    transform = data.train_transform(32, auto_augment="none", random_erase=1.0, crop=False)
    image = torch.full((3, 32, 32), 7, dtype=torch.uint8)
    out = transform(image)
    erased = (out != 7).any(0)  # [H, W]: the erased pixels
    assert out.dtype == torch.uint8 and erased.any() and not erased.all()
    mean = torch.tensor([round(255 * m) for m in data.IMAGENET_MEAN], dtype=torch.uint8)  # 124, 116, 104
    assert torch.equal(out.permute(1, 2, 0)[erased], mean.expand(int(erased.sum()), 3))


# ------------------------------------------------------------------------- distributed, preemption, crash safety

RECORD_RANK_WEIGHTS = """
import sys, torch
sys.path.insert(0, {here!r})
import train
original = train.save_last
def save_last(run, next_epoch, samples_done):  # every rank also dumps its own weights, to compare them
    original(run, next_epoch, samples_done)
    torch.save(train.plain_state_dict(run["net"]), f"{{run['args'].output}}/rank{{run['rank']}}.pt")
train.save_last = save_last
train.main(sys.argv[1:])
"""


def test_torchrun_two_process_gloo_job(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b", "c"), train_per_class=6, val_per_class=3)
    out = str(tmp_path / "out")
    script = tmp_path / "run_ddp.py"
    script.write_text(RECORD_RANK_WEIGHTS.format(here=HERE))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--data", root, "--epochs", "2", "--output", out, "--device", "cpu"] + TINY
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # both ranks hold identical weights
    assert sorted(f for f in os.listdir(out) if f.endswith(".pt")) == ["best.pt", "last.pt", "model.pt", "rank0.pt", "rank1.pt"]
    assert result.stdout.count("done:") == 1  # rank 0 alone prints
    final = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][-1]
    assert final["val_images"] == 9  # 9 val images over 2 ranks: no padding duplicates
    single = train.main(["--data", root, "--eval-only", "--resume", os.path.join(out, "last.pt")] + TINY)
    assert single["images"] == 9
    assert single["top1"] == final["val_top1"] and single["top5"] == final["val_top5"]
    assert single["loss"] == pytest.approx(final["val_loss"], rel=1e-5)


def test_sigterm_to_torchrun_with_loader_workers_saves_the_voted_position(tmp_path):
    """torchrun passes SIGTERM to each rank's whole process group, loader workers included (os.killpg). The workers
    must keep serving until the ranks' stop vote (every --log-every steps), which is more batches than they had
    prefetched here (1 worker x 4); then rank 0 saves the position."""
    root = make_image_folder(tmp_path / "d", train_per_class=48)  # 96 images, 2 ranks x batch 4: 12 steps per epoch
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(HERE, "train.py"),
           "--data", root, "--epochs", "2", "--output", out, "--device", "cpu"] + TINY + ["--workers", "1", "--log-every", "6"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("epoch 1/2 step 6/12"):
            # Rank 0 prints this just before the step-6 vote; on a loaded machine the other rank can reach that vote
            # after a signal sent at once, and the run stops at step 6 (correct, but then the workers never had to
            # outlast their prefetch). Half a second lets both ranks vote first; the stop then comes at the vote at
            # step 12 (or 18 on a fast machine), 0.2-0.4 s per step on 2 loaded cores.
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.communicate(timeout=120)[0]
    assert "stopped by signal 15" in output and "DataLoader worker" not in output, output[-3000:]
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert 6 < ckpt["step"] < 24 and ckpt["step"] == 12 * ckpt["epoch"] + ckpt["samples_done"] // 4


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    root = make_image_folder(tmp_path / "d", train_per_class=12)  # 24 images: 6 steps per epoch at batch 4
    common = ["--data", root, "--epochs", "2"] + TINY + ["--log-every", "1"]
    run_train(common, tmp_path, "full")
    out = str(tmp_path / "part")
    cmd = [sys.executable, os.path.join(HERE, "train.py")] + common + ["--output", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/2 step 2/6"):
            proc.send_signal(signal.SIGTERM)  # a step in progress: it finishes, saves, exits
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume auto" in stdout
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["samples_done"] < 24  # a position inside the first epoch
    run_train(common + ["--resume", "auto"], tmp_path, "part")
    a = torch.load(str(tmp_path / "full" / "last.pt"), weights_only=True)
    b = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert a["step"] == b["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_sigterm_to_the_whole_process_group_with_workers(tmp_path):
    """As SLURM's scancel and time limit do: every process, data loader workers included, gets SIGTERM."""
    root = make_image_folder(tmp_path / "d", train_per_class=12)
    out = str(tmp_path / "out")
    cmd = [sys.executable, os.path.join(HERE, "train.py"), "--data", root, "--epochs", "2"] + TINY + \
        ["--log-every", "1", "--workers", "2", "--output", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch 1/2 step 2/6"):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["samples_done"] < 24 and ckpt["step"] * 4 == ckpt["samples_done"]


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
import train
for version in range(10**9):
    train.save_checkpoint({{"pid": os.getpid(), "version": version, "weights": torch.full((4_000_000,), float(version))}}, {path!r})
"""


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "last.pt")
    script = tmp_path / "save_forever.py"
    script.write_text(SAVE_FOREVER.format(here=HERE, path=path))
    kills_mid_save = 0
    for delay in (0.05, 0.13, 0.21, 0.37, 0.53):  # kill at different moments, most of them inside a save
        proc = subprocess.Popen([sys.executable, str(script)])
        deadline = time.time() + 120
        while not (os.path.exists(path) and torch.load(path, weights_only=True)["pid"] == proc.pid) and time.time() < deadline:
            time.sleep(0.05)  # wait for this process's first complete save, however slow the machine
        time.sleep(delay)
        proc.kill()
        proc.wait()
        kills_mid_save += any(".tmp-" in f for f in os.listdir(tmp_path))
        ckpt = torch.load(path, weights_only=True)
        assert torch.all(ckpt["weights"] == ckpt["version"])
        for f in os.listdir(tmp_path):  # a killed save leaves its temporary file behind; the next run may clean it
            if ".tmp-" in f:
                os.remove(os.path.join(tmp_path, f))
    assert kills_mid_save >= 1  # the kill did land inside a save at least once


def test_unwritable_output_is_reported_before_training(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data", root, "--output", str(tmp_path / "file" / "out")] + TINY)
    assert exit_info.value.code == 2 and "cannot write to --output" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d")
    _, out = run_train(["--data", root, "--epochs", "3", "--max-steps", "3"] + TINY, tmp_path)
    good = open(os.path.join(out, "last.pt"), "rb").read()
    with pytest.raises(SystemExit) as exit_info:
        run_train(["--data", root, "--epochs", "3", "--resume", "auto"] + TINY + ["--lr", "1e30"], tmp_path)
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "loss is nan" in err or "loss is inf" in err
    assert "lr" in err and "step" in err
    assert open(os.path.join(out, "last.pt"), "rb").read() == good


def test_gpu_decode_path_logic_on_cpu(tmp_path):
    """--decode gpu: byte-reading workers, batched decode_jpeg, per-image crop/resize/flip; CMYK and PNG fall back."""
    pixels = torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8).numpy()
    paths = []
    for name, mode in (("rgb.JPEG", "RGB"), ("gray.JPEG", "L"), ("cmyk.JPEG", "CMYK"), ("png.JPEG", "RGB")):
        path = str(tmp_path / name)
        Image.fromarray(pixels).convert(mode).save(path, format="PNG" if name.startswith("png") else "JPEG", quality=95)
        paths.append((path, 0))
    dataset = data.EncodedRandomResizedCrop(paths, 24)
    items, labels, bad = data.collate_encoded([dataset[i] for i in range(4)])
    assert [box is None for _, box, _ in items] == [False, False, True, True] and bad == []
    out = data.decode_batch_on_device(items, 24, "cpu")
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.uint8
    # The device crop of the RGB JPEG matches a PIL crop of the same box within JPEG/resampler differences.
    raw, box, flip = items[0]
    left, top, w, h = box.tolist()
    ref = Image.open(paths[0][0]).convert("RGB").resize((24, 24), Image.BILINEAR, box=(left, top, left + w, top + h))
    ref = data.pil_to_uint8(ref.transpose(Image.FLIP_LEFT_RIGHT) if flip else ref)
    assert (out[0].float() - ref.float()).abs().mean() < 12


def test_train_with_gpu_decode_path_on_cpu(tmp_path):
    root = make_image_folder(tmp_path / "d")
    metrics, _ = run_train(["--data", root, "--epochs", "1", "--decode", "gpu", "--device", "cpu"] + TINY, tmp_path)
    assert metrics["val_images"] == 6


def test_time_based_checkpoint_records_position_mid_epoch(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d")  # 12 images: 3 steps per epoch at batch 4
    saved = []
    original = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda obj, path: (saved.append((os.path.basename(path), obj.get("epoch"), obj.get("samples_done"))), original(obj, path)))
    run_train(["--data", root, "--epochs", "1", "--save-every-min", "1e-9", "--no-ema"] + TINY, tmp_path)
    assert ("last.pt", 0, 4) in saved and ("last.pt", 0, 8) in saved  # after steps 1 and 2, inside epoch 1
    assert ("last.pt", 1, 0) in saved  # and the end-of-epoch checkpoint


# ---------------------------------------------------------------------------------------------------- bench.py

def test_bench_reference_rate_reads_end_to_end_step_time():
    """The reference's "img/s" leaves out the wait for data; bench.py reports batch / "time" (which includes it)."""
    import bench
    line = "Epoch: [0]  [{:>2}/66]  eta: 0:00:09  lr: 0.1  img/s: {}  loss: 6.9 (6.9)  acc1: 0.0 (0.0)  time: {}  data: 0.01"
    log = "\n".join([line.format(0, 100.0, 9.0), line.format(10, 3000.0, 0.2), line.format(20, 2000.0, 0.1),
                     "Epoch: [0] Total time: 0:00:09", "Test:  Total time: 0:00:01", "Training time 0:00:12"])
    rate, own = bench.reference_rate(log, 256, skip_prints=1)
    assert rate == pytest.approx(256 * 2 / 0.3) and own == pytest.approx(2500.0)


def test_bench_jpeg_rows_on_cpu(tmp_path):
    """The real-JPEG section end to end on tiny data: loader alone, CPU decode and the GPU-decode path (run on the CPU)."""
    import argparse
    import bench
    images = os.path.join(make_image_folder(tmp_path / "d"), "train")  # 12 files, one PNG and one grayscale per class
    args = argparse.Namespace(images=images, workers=1, res=[32], batch=4, steps=2, warmup=1, repeat=0,
                              link_dir=str(tmp_path / "links"))
    assert bench.jpeg_plan(args) == (2, 10, 5)  # 12 steps x 4 images over 12 files: 4 copies, plus one
    rows = bench.bench_jpeg(args, torch.device("cpu"))
    assert [r["data"] for r in rows] == ["JPEG, cpu decode, 1 workers, loader alone", "JPEG, cpu decode, 1 workers",
                                         "JPEG, gpu decode, 1 workers", "JPEG, gpu decode, 1 workers, decode_jpeg alone"]
    assert all(float(r["img/s"]) > 0 for r in rows)
