"""One-off: top-1 on imagenette val of saved recipe weights, single view vs. the mean of the image and its mirror."""
# Run from the repository root: PYTHONPATH=. python logs/flip-tta-2026-11-30.py runs/<run>/model.pt ...
import sys, torch, train, data, model as models
ckpts = sys.argv[1:]
args = train.get_args(["--data", "/work/shared/data/imagenette-128", "--batch-size", "64", "--train-res", "128",
                       "--val-res", "128", "--val-resize", "128", "--workers", "2", "--device", "cpu", "--channels-last"])
n_classes, _, _, val_loader = data.build_loaders(args, 0, 1, torch.device("cpu"))
for path in ckpts:
    net = models.create_model("resnet50", n_classes)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(memory_format=torch.channels_last).eval()
    hits = torch.zeros(2); n = 0
    with torch.no_grad():
        for images, labels, _ in val_loader:
            x = data.to_device_normalized(images, torch.device("cpu"), True)
            p1 = net(x).softmax(1)
            p2 = net(x.flip(-1)).softmax(1)
            hits += torch.stack([(p1.argmax(1) == labels).sum(), ((p1 + p2).argmax(1) == labels).sum()]).float()
            n += len(labels)
    print(f"{path}: images {n} single view {100 * hits[0] / n:.2f}%  with mirror {100 * hits[1] / n:.2f}%", flush=True)
