"""LAMB (You et al. 2019, https://arxiv.org/abs/1904.00962), the optimizer of the "ResNet strikes back" recipes.

Needs only torch; copy it alone into another project. Used like any torch optimizer:

    from lamb import Lamb
    optimizer = Lamb([{"params": weights, "weight_decay": 0.02}, {"params": biases_and_bn, "weight_decay": 0.0}],
                     lr=8e-3)
    loss.backward(); optimizer.step(); optimizer.zero_grad()

Step for step the same as timm's `timm.optim.Lamb` with its defaults (timm/optim/lamb.py, the NVIDIA FusedLAMB
variant; bias_correction=True, grad_averaging=True, trust_clip=False, always_adapt=False, decoupled_decay=False):
1. All gradients are divided by max(global_norm / max_grad_norm, 1), global_norm being the L2 norm over every
   parameter of every group (max_grad_norm=None turns this off).
2. Adam moments m, v with bias correction: update = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), t counted
   per group, as timm does.
3. weight_decay * w is added to the update (decay goes through the trust ratio, not beside it).
4. Trust ratio ||w|| / ||update||, 1 where either norm is 0; groups with weight_decay 0 (biases, BatchNorm) get
   no trust ratio and take a plain Adam step.
5. w -= lr * update.
Unlike timm, p.grad is left as it was (timm divides it in place by the clip factor); the weights come out the same.

Learning rate: timm's train.py, when --lr is not given, sets lr = lr_base * sqrt(global_batch / lr_base_size), 256 by
default, for LAMB (any optimizer whose name contains "ada" or "lamb"; the others scale linearly); an --lr given is
used as is. The paper states its recipes' lr at a global batch of 2048.
"""
import torch


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Lamb hyperparameters: lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, not {max_grad_norm}")
        # max_grad_norm is one threshold for the global norm: like timm, step() reads it from defaults only.
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("Lamb does not support sparse gradients")
        clip = None
        if grads and self.defaults["max_grad_norm"] is not None:
            # Stays a device tensor: no host sync. The norm of the per-tensor norms is the global L2 norm.
            global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            clip = (global_norm / self.defaults["max_grad_norm"]).clamp_(min=1.0)
        for group in self.param_groups:
            # timm counts steps per group (also for a step where the group has no gradient), so a checkpoint's
            # param_groups carry "step" and load_state_dict restores it.
            group["step"] = step = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            correction1, correction2 = 1 - beta1 ** step, 1 - beta2 ** step
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if clip is None else p.grad / clip
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (exp_avg / correction1).div_((exp_avg_sq.sqrt() / correction2 ** 0.5).add_(group["eps"]))
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    update.mul_(torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0))
                p.add_(update, alpha=-group["lr"])
        return loss
