"""``data=synthetic``: teacher-student least squares with a known optimum.

    x ~ N(0, I_{n_in}),   W* ~ N(0, teacher_std^2)^{n_out x n_in},
    train/val targets  y = W* x + noise_std * eps   (eps ~ N(0, I)),
    test targets       y = W* x                     (noise-free).

Because the inputs are white and the test targets noise-free, the test MSE of a linear model W
(mean over samples and outputs) estimates ``||W - W*||_F^2 / n_out``: ``test/loss`` *is* the distance to
the optimum, whatever the model's internals (analog tiles included). ``DataBundle.extra`` exposes

* ``teacher_weight``  (n_out, n_in) float64 -- W*, the population optimum of the MSE loss;
* ``optimum_weight``  (n_out, n_in) float64 -- the least-squares solution on the training split
  (W_ls = Y^T X (X^T X)^{-1}), the finite-sample optimum that SGD on this split converges to;
* ``optimum_train_loss`` -- training MSE of W_ls (the floor of the training loss), and
  ``noise_floor`` = noise_std^2 (expected training loss of W*).
"""

from __future__ import annotations

import torch

from analogtrain.data.base import Split, finalize, register_dataset


def make_teacher(n_out: int, n_in: int, teacher_std: float, seed: int) -> torch.Tensor:
    """W* (n_out, n_in) float64 drawn from ``seed`` (independent of the samples' stream)."""
    g = torch.Generator().manual_seed(seed ^ 0x7EAC4E5)
    return torch.randn(n_out, n_in, generator=g, dtype=torch.float64) * teacher_std


@register_dataset("synthetic")
def load_synthetic(cfg, seed: int):
    n_in, n_out = int(cfg.n_in), int(cfg.n_out)
    w_star = make_teacher(n_out, n_in, float(cfg.teacher_std), seed)
    g = torch.Generator().manual_seed(seed ^ 0x5A3F1E)
    x_tr = torch.randn(int(cfg.n_train), n_in, generator=g, dtype=torch.float64)
    y_tr = x_tr @ w_star.T + float(cfg.noise_std) * torch.randn(int(cfg.n_train), n_out, generator=g,
                                                                dtype=torch.float64)
    x_te = torch.randn(int(cfg.n_test), n_in, generator=g, dtype=torch.float64)
    y_te = x_te @ w_star.T

    train = Split(x_tr.float(), y_tr.float())
    test = Split(x_te.float(), y_te.float())
    bundle = finalize("synthetic", cfg, seed, train, test, task="regression", num_outputs=n_out,
                      scale_stats=False, source=f"generated (teacher-student, seeds.data={seed})")
    # least-squares optimum of the split the model actually trains on (after the val hold-out / limit)
    xt, yt = bundle.train.x.double(), bundle.train.y.double()
    w_ls = torch.linalg.lstsq(xt, yt).solution.T  # (n_out, n_in)
    bundle.extra.update(
        teacher_weight=w_star,
        optimum_weight=w_ls,
        optimum_train_loss=float(((xt @ w_ls.T - yt) ** 2).mean()),
        noise_floor=float(cfg.noise_std) ** 2,
    )
    return bundle
