"""Wrap a UNet trained on the discrete SD noise schedule into `D(x, sigma) -> x0`.

Samplers only ever see this calling convention (k-diffusion's): the model takes the noisy latent
at noise level `sigma` and returns its estimate of the clean latent. Epsilon and v-prediction
differ only in how the network output becomes x0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Prediction = Literal["epsilon", "v_prediction"]
# UNet call: (scaled latent, timestep, **conditioning) -> network output
UNetFn = Callable[..., torch.Tensor]


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                                 timesteps: int = 1000, zero_terminal_snr: bool = False) -> torch.Tensor:
    """The SD training schedule: betas linear in sqrt space, as `linear_start/linear_end` in the LDM yaml."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if zero_terminal_snr:
        alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
    return alphas_cumprod.float()


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023: shift and scale sqrt(alpha_bar) so the last step is pure noise."""
    sqrt_ac = alphas_cumprod.sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * first / (first - last)
    rescaled = sqrt_ac ** 2
    rescaled[-1] = 4.8973451890853435e-08  # keep sigma finite, as AUTOMATIC1111 does
    return rescaled


@dataclass
class DiscreteSchedule:
    """sigma <-> timestep conversion for a model trained on discrete timesteps."""

    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self._log_sigmas_by_device: dict[torch.device, torch.Tensor] = {}

    def log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        """The table on `device`, copied there once: a CPU-to-GPU copy each step would also make the
        host wait for the GPU each step (PyTorch synchronises blocking copies)."""
        table = self._log_sigmas_by_device.get(device)
        if table is None:
            table = self._log_sigmas_by_device[device] = self.log_sigmas.to(device)
        return table

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep by linear interpolation in log-sigma (k-diffusion's DiscreteSchedule)."""
        log_sigma = sigma.log()
        log_sigmas = self.log_sigmas_on(sigma.device)
        dists = log_sigma - log_sigmas[:, None]
        # The table ascends, so the entries at or below log_sigma are a prefix and the last of them is
        # k-diffusion's `dists.ge(0).cumsum(0).argmax(0)`; counting them is one reduction, where the
        # scan cost 90 us of GPU time per sampling step.
        low_idx = (dists.ge(0).sum(dim=0) - 1).clamp(min=0, max=log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = log_sigmas[low_idx], log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas_on(t.device)
        return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp()


class DiscreteDenoiser:
    """`D(x, sigma, **cond) -> x0` around a UNet with epsilon or v prediction."""

    def __init__(self, unet: UNetFn, schedule: DiscreteSchedule, prediction: Prediction):
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        sigma_b = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        c_in = 1 / (sigma_b ** 2 + 1) ** 0.5
        timestep = self.schedule.sigma_to_t(sigma.float())
        out = self.unet(x * c_in, timestep, **cond)
        if self.prediction == "v_prediction":
            c_skip = 1 / (sigma_b ** 2 + 1)
            c_out = -sigma_b / (sigma_b ** 2 + 1) ** 0.5
            return x * c_skip + out * c_out
        return x - out * sigma_b
