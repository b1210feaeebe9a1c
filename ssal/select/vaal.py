"""Variational adversarial active learning (Sinha et al. 2019): a VAE and a discriminator, trained
each round on the labeled and unlabeled images (the task model is not involved), play a minimax
game in the VAE's latent space; the candidates the discriminator is surest are unlabeled are picked.

Everything of the method is here: the networks, their losses, the training and the strategy. The
networks are sized for 28-32 px images (every image is resized to 32 x 32). Defaults are sized for
CPUs: convolutions of 16-32-64 channels (the paper's: 128-256-512-1024) and 500 iterations per round
(the paper's: 100 epochs); raise ``width`` and ``steps`` on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssal import checks
from ssal.select.base import STRATEGIES, Signals, Strategy
from ssal.select.functional import top_k
from ssal.select.signals import Chunk, Signal, produces

SIDE = 32  # the networks' input side


@dataclass(frozen=True)
class Images(Signal):
    """The images themselves, uint8 [N, C, H, W] (as the data set stores them)."""


@produces(Images)
def _images(req: Images, chunk: Chunk) -> torch.Tensor:
    return chunk.x.mul(255.0).round_().to(torch.uint8)  # exactly the stored uint8 values back


class VAE(nn.Module):
    """Four stride-2 4x4 convolutions to the latent mean and log-variance; the mirror image back."""

    def __init__(self, channels: int, latent: int, width: int = 16):
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w[0], 4, 2, 1), nn.BatchNorm2d(w[0]), nn.ReLU(),
            nn.Conv2d(w[0], w[1], 4, 2, 1), nn.BatchNorm2d(w[1]), nn.ReLU(),
            nn.Conv2d(w[1], w[2], 4, 2, 1), nn.BatchNorm2d(w[2]), nn.ReLU(),
            nn.Flatten())  # 4 x 4
        self.mu = nn.Linear(w[2] * 16, latent)
        self.logvar = nn.Linear(w[2] * 16, latent)
        self.expand = nn.Linear(latent, w[2] * 16)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(w[2], w[1], 4, 2, 1), nn.BatchNorm2d(w[1]), nn.ReLU(),
            nn.ConvTranspose2d(w[1], w[0], 4, 2, 1), nn.BatchNorm2d(w[0]), nn.ReLU(),
            nn.ConvTranspose2d(w[0], channels, 4, 2, 1))
        self.width = w[2]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mu, logvar); z = mu + exp(logvar / 2) * noise."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * noise
        return self.decoder(self.expand(z).view(len(x), self.width, 4, 4)), mu, logvar


class Discriminator(nn.Module):
    """The paper's three-layer MLP on the latent code: the probability that a sample is labeled."""

    def __init__(self, latent: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of "labeled", [N]."""
        return self.net(z).squeeze(1)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Mean squared reconstruction error plus beta times the KL divergence to N(0, I), the latter
    averaged over the batch's elements as in the paper's code (-1/2 mean(1 + logvar - mu^2 - exp(logvar)))."""
    kld = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
    return F.mse_loss(recon, x) + beta * kld


def discriminator_loss(d_labeled: torch.Tensor, d_unlabeled: torch.Tensor) -> torch.Tensor:
    """BCE of "labeled": 1 for the labeled codes, 0 for the unlabeled ones."""
    return (F.binary_cross_entropy_with_logits(d_labeled, torch.ones_like(d_labeled))
            + F.binary_cross_entropy_with_logits(d_unlabeled, torch.zeros_like(d_unlabeled)))


def adversarial_loss(d_labeled: torch.Tensor, d_unlabeled: torch.Tensor) -> torch.Tensor:
    """The VAE's side of the game: every code should look labeled to the discriminator."""
    return (F.binary_cross_entropy_with_logits(d_labeled, torch.ones_like(d_labeled))
            + F.binary_cross_entropy_with_logits(d_unlabeled, torch.ones_like(d_unlabeled)))


def _prepare(x: torch.Tensor) -> torch.Tensor:
    x = x.float().div(255.0)
    if x.shape[-2:] != (SIDE, SIDE):
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return x


def train_vaal(labeled: torch.Tensor, unlabeled: torch.Tensor, cfg, generator: torch.Generator,
               device: torch.device | str = "cpu") -> tuple[VAE, Discriminator]:
    """``cfg.steps`` iterations on uint8 images: per iteration, ``cfg.vae_steps`` VAE steps (reconstruction
    and KL on a labeled and an unlabeled batch, plus ``cfg.adversary`` times the adversarial loss), then
    ``cfg.discriminator_steps`` discriminator steps on the codes (mu) of both batches. Adam at ``cfg.lr``
    (the paper's 5e-4). Seeded by ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VAE(labeled.shape[1], cfg.latent, cfg.width).to(device)
        disc = Discriminator(cfg.latent).to(device)
        opt_v = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr)
        g = torch.Generator().manual_seed(seed)
        b = cfg.batch_size

        def batch(images: torch.Tensor) -> torch.Tensor:
            return _prepare(images[torch.randint(0, len(images), (b,), generator=g)]).to(device)

        def noise(n: int) -> torch.Tensor:
            return torch.randn(n, cfg.latent, generator=g).to(device)

        vae.train()
        disc.train()
        for _ in range(cfg.steps):
            x_l, x_u = batch(labeled), batch(unlabeled)
            for _ in range(cfg.vae_steps):
                r_l, mu_l, lv_l = vae(x_l, noise(b))
                r_u, mu_u, lv_u = vae(x_u, noise(b))
                loss = (vae_loss(x_l, r_l, mu_l, lv_l, cfg.beta) + vae_loss(x_u, r_u, mu_u, lv_u, cfg.beta)
                        + cfg.adversary * adversarial_loss(disc(mu_l), disc(mu_u)))
                opt_v.zero_grad(set_to_none=True)
                loss.backward()
                opt_v.step()
            for _ in range(cfg.discriminator_steps):
                with torch.no_grad():
                    mu_l, mu_u = vae.encode(x_l)[0], vae.encode(x_u)[0]
                loss = discriminator_loss(disc(mu_l), disc(mu_u))
                opt_d.zero_grad(set_to_none=True)
                loss.backward()
                opt_d.step()
    return vae.eval(), disc.eval()


@torch.no_grad()
def labeled_probability(vae: VAE, disc: Discriminator, images: torch.Tensor, device: torch.device | str = "cpu",
                        chunk: int = 512) -> torch.Tensor:
    """The discriminator's probability that each image is labeled, from its code mu, [N]."""
    out = [torch.sigmoid(disc(vae.encode(_prepare(images[s:s + chunk]).to(device))[0])).float().cpu()
           for s in range(0, len(images), chunk)]
    return torch.cat(out) if out else torch.zeros(0)


@STRATEGIES.register("vaal")
class VAAL(Strategy):
    """Lowest probability of "labeled" under a discriminator trained against a VAE on labeled vs
    unlabeled images (Sinha et al. 2019); reads the images, not the task model."""

    @dataclass
    class Config:
        latent: int = 32  # the paper's latent size for 32 x 32 images
        steps: int = 500  # training iterations per round
        batch_size: int = 64  # labeled and unlabeled images per iteration, each
        lr: float = 5e-4
        beta: float = 1.0  # weight of the KL term
        adversary: float = 1.0  # weight of the VAE's adversarial loss
        vae_steps: int = 2  # VAE steps per iteration (the paper's code)
        discriminator_steps: int = 1
        width: int = 16  # channels of the first convolution (doubled twice)

        def check(self, key: str, recipe) -> None:
            for name in ("latent", "steps", "batch_size", "vae_steps", "discriminator_steps", "width"):
                checks.at_least(f"{key}.{name}", getattr(self, name), 1)
            checks.positive(f"{key}.lr", self.lr)
            checks.at_least(f"{key}.beta", self.beta, 0)
            checks.at_least(f"{key}.adversary", self.adversary, 0)

    needs = (Images(), Images(labeled=True))
    _scored: tuple[torch.Tensor, torch.Tensor] | None = None  # (candidates, probability) of the last select

    def scores(self, signals: Signals) -> torch.Tensor | None:
        """Minus the probability of "labeled", once :meth:`select` has trained on these candidates."""
        if self._scored is None or not torch.equal(self._scored[0], signals.candidates):
            return None
        return -self._scored[1]

    def select(self, signals: Signals, budget: int, generator: torch.Generator) -> torch.Tensor:

        if budget >= len(signals.candidates):  # nothing to choose: no networks to train
            return signals.candidates
        cands = signals[Images()]
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        vae, disc = train_vaal(signals[Images(labeled=True)], cands, self.cfg, generator, device)
        probability = labeled_probability(vae, disc, cands, device)
        self._scored = (signals.candidates, probability)
        return signals.candidates[top_k(-probability, budget)]
