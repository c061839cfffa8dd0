"""Probe (not part of the product): the Imagenette leader's network in our train.py, to ask how much of the gap
between our unmodified ResNet-50 (76.33% at the leader's optimiser settings, seed 0) and the leaderboard's
85.77-87.43% is the architecture (plan s, logs/PLAN-leader-arch-2026-12-02s.txt).

The network is fastai's own `xse_resnext50(n_out=10, act_cls=Mish, sa=1, sym=0, pool=MaxPool)`, exactly as the
leader's notebook builds it for its 86.37% "without BlurPool" runs (radekosmulski/imagenette-LB-entry, "imagenette -
5 epochs.ipynb", theirs): ResNeXt-50 32x4d with squeeze-excitation, Mish, a 3-conv deep stem, avg-pool shortcuts
(ResNet-D) and one self-attention layer. fastai's constructor initialises it (Kaiming normal on convs and the
linear layer, the last BatchNorm of each block at 0), so train.py's init is switched off: the init scheme is
the one the leader's runs had. Everything else (data, loop, Ranger, LR shape, loss) is train.py unchanged.

Needs fastai (for the network only; not a project requirement), installed here as (fastai itself without its
dependencies, which pull in much more than the network needs):
    pip install matplotlib pandas beartype rich
    pip install --no-deps fastai==2.8.12 fastcore fasttransform "plum-dispatch<2.10" "fastprogress==1.0.3" \
        fastdownload scikit-learn joblib narwhals threadpoolctl
    PYTHONPATH=. python logs/leader-arch-probe.py <train.py flags>
"""
import sys

import train


def leader_network(name, num_classes):
    from fastai.layers import MaxPool, Mish
    from fastai.vision.models.xresnet import xse_resnext50
    return xse_resnext50(n_out=num_classes, act_cls=Mish, sa=1, sym=0, pool=MaxPool)


if __name__ == "__main__":
    train.models.create_model = leader_network
    train.init.init_weights = lambda *args, **kwargs: None  # keep fastai's own init, as the leader's runs had
    print("probe: fastai xse_resnext50(act_cls=Mish, sa=1, sym=0, pool=MaxPool) in place of --model; fastai's init",
          flush=True)
    train.main(sys.argv[1:])
