"""An exponential moving average (EMA) of a model's weights and buffers, for evaluation and the final weights.

Needs only torch; copy it alone into another project.

    ema = EMA(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)       # every step, after the optimiser
    evaluate(ema.module)                            # a plain nn.Module: its state_dict loads into the model

What torchvision's reference (`ExponentialMovingAverage`, an `AveragedModel`) computes, with `use_buffers=True`:
every floating-point tensor of the state_dict, BatchNorm statistics included, moves to `decay * ema + (1 - decay) *
model`; integer buffers (num_batches_tracked) are copied. Unlike `AveragedModel.update_parameters`, which copies its
step counter from the CPU to the device every step (a host sync that keeps the CPU from running ahead of the GPU),
this is one `_foreach_lerp_` over device tensors and no sync.
"""
import copy

import torch


class EMA:
    def __init__(self, model, decay):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.pairs = decay, None

    @torch.no_grad()
    def update(self, model, copy_only=False):
        """ema <- decay * ema + (1 - decay) * model; `copy_only` sets ema <- model (torchvision does so in warmup).
        Always pass the same model: its tensors are looked up once (loading a state_dict copies into them)."""
        if self.pairs is None:
            self.pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        floats = [(e, m) for e, m in self.pairs if e.is_floating_point()]
        if floats and not copy_only:
            torch._foreach_lerp_([e for e, _ in floats], [m for _, m in floats], 1.0 - self.decay)
        for e, m in self.pairs if copy_only else [(e, m) for e, m in self.pairs if not e.is_floating_point()]:
            e.copy_(m)
