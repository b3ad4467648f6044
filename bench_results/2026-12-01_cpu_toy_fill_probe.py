"""What the toy prior makes of a frame-filling image of a colour: the x0 estimate at several t and CFG scales.

Run from the repository root: PYTHONPATH=backend python bench_results/2026-12-01_cpu_toy_fill_probe.py
(output: 2026-12-01_cpu_toy_fill_probe.txt)."""
import torch
from prolific.prior.diffusion import load_prior
from prolific.toy.shapes import PALETTE
torch.manual_seed(0)
p = load_prior(None, torch.device("cpu"), torch.float32)
ab = p.scheduler.alphas_cumprod
for prompt, col in (("a red cube", "red"), ("a green cone", "green"), ("a blue torus", "blue"), ("a red sphere", "red")):
    cond, uncond = p.embed_prompt(prompt).get(["front"] * 8)
    c = torch.tensor(PALETTE[col]).view(1, 3, 1, 1)
    full = (c * 2 - 1).expand(8, 3, 64, 64)
    for t in (200, 500, 800, 950):
        a = ab[t]
        n = torch.randn(8, 3, 64, 64)
        x_t = a.sqrt() * full + (1 - a).sqrt() * n
        tt = torch.full((8,), t)
        for g in (1.0, 7.5):
            eps = p.predict_noise(x_t, tt, cond, uncond, g)
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            img = ((x0.clamp(-1, 1) + 1) / 2)
            fg = (img.amin(1) < 0.8).float().mean().item()
            print(f"{prompt:14s} t={t} g={g}: x0 from a full-{col} x_t: foreground {fg:.2f}, mean {img.mean((0,2,3)).numpy().round(2)}")
