"""Variational Score Distillation (and SDS as its special case) for the 3D stages.

VSD (ProlificDreamer) pushes each rendered particle along w(t)(ε_pretrained − ε_φ), where ε_φ is the score of
the particles' own renders, estimated by the pretrained UNet plus a LoRA that is trained alongside on those
renders, conditioned on the camera. SDS (DreamFusion) replaces ε_φ by the injected noise ε.

The LoRA lives on the SAME UNet as the pretrained branch (peft adapter "vsd"): the pretrained branch runs with
the adapter disabled, ε_φ with it enabled, so no second copy of the UNet is held (unless asked for, below). The
camera (its c2w matrix, flattened) goes through a small MLP whose output is added to the UNet's time embedding
while ε_φ runs; its last layer starts at zero and the LoRA's B matrices start at zero, so ε_φ starts as the
pretrained model.

What runs is chosen when the estimator is built: `batched=True` evaluates the pretrained CFG pair and ε_φ in ONE
UNet call (`both_branches`: the LoRA gated per sample by `LoraSampleGate`, the camera embedding zero on the
pretrained samples), else one call per branch; `separate_estimator=True` keeps the LoRA on a copy of the UNet, as
the reference implementations do (the bench's side-by-side baseline); `fused_adam` picks the single-kernel AdamW
on CUDA; `graphs=True` replays CUDA graphs (prior/graphs.py) of the VAE encoder's forward and backward, of the
batched branches and of the LoRA update step, per shape, and runs them eagerly where capture is impossible
(saying so once through `say`); `overlap=True` runs the estimator's update on its own CUDA stream, beside the
particles' next step (prior/update_stream.py); `lora_kernels=True` builds the LoRA's layers with their branch as
Triton kernels on CUDA (prior/lora_layers.py).
"""
from __future__ import annotations

import contextlib
import copy
import sys
from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..config import PriorConfig
from ..kernels import triton_available
from .diffusion import DiffusionPrior, PromptEmbeddings, guided_eps
from .graphs import Captures
from .lora_layers import LoraSampleGate, lora_config
from .update_stream import make_updates

ADAPTER = "vsd"


def time_range(cfg: PriorConfig, step: int, total_steps: int) -> tuple[float, float]:
    """Fractions (t_min, t_max) of the diffusion time for this step: the wide range U(t_min, t_max) for the first
    anneal_fraction of the steps, then U(t_min, t_max_annealed) (the paper: 0.98 → 0.50 after 5k of 25k)."""
    if step < cfg.anneal_fraction * total_steps:
        return cfg.t_min, cfg.t_max
    return cfg.t_min, cfg.t_max_annealed


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def vsd_gradient(eps_pretrained: torch.Tensor, eps_phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w(t)(ε_pretrained − ε_φ), with non-finite entries zeroed so one bad sample cannot poison the scene."""
    return torch.nan_to_num(w * (eps_pretrained - eps_phi), nan=0.0, posinf=0.0, neginf=0.0)


class CameraEmbedding(nn.Module):
    """c2w [B,4,4] → [B, time_embed_dim], added to the UNet's time embedding. Zero at initialisation."""

    def __init__(self, out_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, c2w: torch.Tensor) -> torch.Tensor:
        return self.net(c2w.reshape(-1, 16).float())


class ScoreDistillation:
    """Turns renders into a loss whose gradient w.r.t. the renders' model-space x0 is the VSD/SDS direction."""

    def __init__(self, prior: DiffusionPrior, cfg: PriorConfig, guidance: str, batched: bool = False,
                 separate_estimator: bool = False, fused_adam: bool = False, graphs: bool = False,
                 overlap: bool = False, lora_kernels: bool = False, say: Callable[[str], None] = _to_stderr,
                 reduce_grads: Callable[[list, int], None] | None = None):
        """`reduce_grads(params, rows)`, when given, runs between the estimator's backward and its optimizer
        step (stages/distributed.py: the mean over every process's renders)."""
        if guidance not in ("vsd", "sds"):
            raise ValueError(f"Unknown guidance '{guidance}': use vsd or sds.")
        if batched and separate_estimator:
            raise ValueError("The branches can share one UNet call only when they share one UNet.")
        self.prior, self.cfg, self.guidance = prior, cfg, guidance
        # Only VSD has a second branch to batch with the pretrained one.
        self.batched = batched and guidance == "vsd"
        self.fused_adam = fused_adam and prior.device.type == "cuda"
        self.lora_kernels = lora_kernels and prior.device.type == "cuda" and triton_available()
        self.gate = LoraSampleGate()
        self.reduce_grads = reduce_grads
        self.captures = Captures(prior.device, say) if graphs else None
        # Over several processes the update all-reduces its gradients mid-step: it stays on the current stream.
        self.updates = make_updates(overlap and guidance == "vsd" and reduce_grads is None, prior.device)
        # What the loss and the estimator's update call: captured per shape, or the eager methods themselves.
        self._encoder: Callable = prior.encode_images
        self._pretrained: Callable = prior.predict_noise
        self._branches: Callable = self._both_branches
        self._train: Callable = self._train_step
        if self.captures is not None:
            if not prior.pixel_space:
                self._encoder = self.captures.encoder("the VAE encoder", prior.encode_images)
            self._pretrained = self.captures.call("the pretrained CFG pair", prior.predict_noise)
            self._branches = self.captures.call("the pretrained CFG pair and ε_φ", self._both_branches)
            # Over several processes the update all-reduces its gradients mid-step, which a graph cannot hold.
            if reduce_grads is None:
                self._train = self.captures.call("the LoRA update", self._train_step)
        self._batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._batch_used = False
        self._camera_emb: torch.Tensor | None = None
        self._hook = None
        self.camera: CameraEmbedding | None = None
        self.lora_params: dict[str, nn.Parameter] = {}
        self.optimizer = None
        self.unet = None  # the UNet that carries the LoRA
        if guidance == "vsd":
            # The prior's own, or (the reference layout) a copy made before the LoRA is added.
            self.unet = copy.deepcopy(prior.unet) if separate_estimator else prior.unet
            self._attach_estimator()

    # -- the estimator ε_φ: LoRA + camera embedding on the prior's own UNet --------------------------------

    def _attach_estimator(self) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        unet = self.unet
        if getattr(unet, "peft_config", None) and ADAPTER in unet.peft_config:
            unet.delete_adapters(ADAPTER)  # a previous job's estimator: start afresh
        rank = self.cfg.lora_rank
        unet.add_adapter(lora_config(rank, self.lora_kernels), adapter_name=ADAPTER)
        self._tuner_layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self._tuner_layers:
            layer.lora_dropout[ADAPTER] = self.gate
        self._set_adapter(False)
        # LoRA weights train in fp32 whatever the UNet's dtype (peft casts the activations to them).
        for name, param in unet.named_parameters():
            if f"lora_A.{ADAPTER}." in name or f"lora_B.{ADAPTER}." in name:
                param.data = param.data.float()
                param.requires_grad_(True)
                self.lora_params[name] = param
        params = list(self.lora_params.values())
        if self.cfg.camera_condition:
            time_dim = unet.time_embedding.linear_2.out_features
            self.camera = CameraEmbedding(time_dim).to(self.prior.device)
            self._hook = unet.time_embedding.register_forward_hook(self._add_camera)
            params += list(self.camera.parameters())
        # Captured, the step counts live on the device (capturable); every step then runs that same code.
        capturable = self.captures is not None and self.captures.enabled
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lora_lr, fused=self.fused_adam or None,
                                           capturable=capturable)

    def _set_adapter(self, enabled: bool) -> None:
        for layer in self._tuner_layers:
            layer.enable_adapters(enabled)

    def _add_camera(self, module, inputs, output):
        if self._camera_emb is None:
            return output
        return output + self._camera_emb.to(output.dtype)

    @contextlib.contextmanager
    def _estimator(self, c2w: torch.Tensor, pretrained_rows: int = 0):
        """While inside, the UNet is ε_φ: adapter on, camera embedding added to the time embedding. With
        `pretrained_rows` > 0 the first that many samples of the batch stay the pretrained model (LoRA gated off,
        zero camera embedding) and the rest are ε_φ for the cameras c2w."""
        self._set_adapter(True)
        if self.camera is not None:
            cam = self.camera(c2w.to(self.prior.device))
            # Zero rows add exactly nothing to the pretrained samples' time embedding.
            self._camera_emb = torch.cat([cam.new_zeros(pretrained_rows, cam.shape[1]), cam])
        gate = contextlib.nullcontext()
        if pretrained_rows:
            rows = pretrained_rows + c2w.shape[0]
            gate = self.gate.only(torch.arange(rows, device=self.prior.device) >= pretrained_rows)
        try:
            with gate:
                yield
        finally:
            self._set_adapter(False)
            self._camera_emb = None

    def eps_phi(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
        """ε_φ(x_t, t, c, y): the LoRA branch, conditional only (CFG scale 1, as threestudio's VSD)."""
        with self._estimator(c2w):
            return self.prior.unet_eps(x_t, t, cond, unet=self.unet)

    @torch.no_grad()
    def both_branches(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                      phi_cond: torch.Tensor, c2w: torch.Tensor,
                      guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided ε_pretrained, ε_φ) from ONE UNet call on [cond, uncond, ε_φ's text] (without uncond, or at CFG
        scale 1: [cond, ε_φ's text]); the same numbers as `prior.predict_noise` then `eps_phi`, one launch
        sequence instead of two (a replayed graph of it with `graphs`)."""
        return self._branches(x_t, t, cond, uncond, phi_cond, c2w, guidance_scale)

    def _both_branches(self, x_t, t, cond, uncond, phi_cond, c2w, guidance_scale):
        n = x_t.shape[0]
        guided = uncond is not None and guidance_scale != 1.0
        embs = [cond, uncond, phi_cond] if guided else [cond, phi_cond]
        k = len(embs)
        with self._estimator(c2w, pretrained_rows=(k - 1) * n):
            eps = self.prior.unet_eps(torch.cat([x_t] * k), torch.cat([t] * k), torch.cat(embs)).chunk(k)
        return (guided_eps(eps[0], eps[1], guidance_scale) if guided else eps[0]), eps[-1]

    def estimator_cond(self, prompt: PromptEmbeddings, directions: list[str]) -> torch.Tensor:
        """The text embedding ε_φ sees: the bare prompt (both references), or the pretrained branch's
        view-suffixed one with cfg.lora_view_prompt."""
        if self.cfg.lora_view_prompt:
            return prompt.get(directions)[0]
        return prompt.get_bare(len(directions))

    # -- the particles' gradient ----------------------------------------------------------------------------

    # A generator, or a sequence of them, one per sample (row) of the batch: row i draws from the i-th.

    def _sample_t(self, n: int, lo: float, hi: float, generator) -> torch.Tensor:
        T = self.prior.num_train_timesteps
        t_lo, t_hi = int(lo * T), min(int(hi * T), T - 1)
        if isinstance(generator, Sequence):
            return torch.cat([self._sample_t(1, lo, hi, g) for g in generator])
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randint(t_lo, t_hi + 1, (n,), generator=generator, device=gen_device).to(self.prior.device)

    def _uniform(self, generator: torch.Generator | None) -> float:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.rand((), generator=generator, device=gen_device).item()

    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor:
        if isinstance(generator, Sequence):
            return torch.cat([self._noise(like[i:i + 1], g) for i, g in enumerate(generator)])
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randn(like.shape, generator=generator, device=gen_device).to(like.device)

    def loss(self, images: torch.Tensor, c2w: torch.Tensor, directions: list[str], prompt: PromptEmbeddings,
             step: int, total_steps: int, generator=None) -> tuple[torch.Tensor, dict]:
        """Score-distillation loss of renders [B,3,H,W] in [0,1] seen from cameras c2w [B,4,4]; `generator` draws
        t and the noise (one per render when a sequence).

        d loss / d x0_i = w(t_i)(ε_pretrained − ε_φ)_i / B, with x0 the renders in the UNet's input space:
        loss = ½‖x0 − sg(x0 − g)‖² / B, the batch mean as in threestudio, so the gradient does not grow with the
        number of particles. w(t) = σ_t² = 1 − ᾱ_t (DreamFusion's choice, threestudio's `1 - alphas[t]`).
        ε_φ is the LoRA estimator under VSD (with `estimator_cond`'s text) and the injected noise under SDS; the
        pretrained branch sees the view-suffixed prompt with cfg.guidance_scale under VSD and
        cfg.sds_guidance_scale under SDS.
        """
        prior, cfg = self.prior, self.cfg
        x0 = self.encode(images)
        B = x0.shape[0]
        t_lo, t_hi = time_range(cfg, step, total_steps)
        t = self._sample_t(B, t_lo, t_hi, generator)
        noise = self._noise(x0, generator)
        cond, uncond = prompt.get(directions)
        self.updates.wait()  # the UNet's LoRA and camera MLP as the last estimator update left them
        with torch.no_grad():
            ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = ab.sqrt() * x0.detach() + (1 - ab).sqrt() * noise
            if self.guidance == "vsd":
                phi_cond = self.estimator_cond(prompt, directions)
                if self.batched:
                    eps_pre, eps_phi = self.both_branches(x_t, t, cond, uncond, phi_cond, c2w, cfg.guidance_scale)
                else:
                    eps_pre = self.pretrained(x_t, t, cond, uncond, cfg.guidance_scale)
                    eps_phi = self.eps_phi(x_t, t, phi_cond, c2w)
            else:
                eps_pre = self.pretrained(x_t, t, cond, uncond, cfg.sds_guidance_scale)
                eps_phi = noise
            grad = vsd_gradient(eps_pre, eps_phi, 1 - ab)
        target = (x0 - grad).detach()
        loss = 0.5 * ((x0 - target) ** 2).sum() / B
        if self.guidance == "vsd":
            if self._batch_used:
                self._batch, self._batch_used = [], False
            self._batch.append((x0.detach(), c2w.detach().to(prior.device).float(), phi_cond.detach()))
        # 0-dim tensors, not floats: reading one waits for the GPU, and a step that does not read them must not.
        info = {"t": t.float().mean(), "t_range": (t_lo, t_hi), "grad_norm": grad.norm()}
        return loss, info

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """prior.encode_images (replayed from graphs with `graphs`)."""
        return self._encoder(images)

    def pretrained(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                   guidance_scale: float) -> torch.Tensor:
        """prior.predict_noise, the guided pretrained ε (replayed from graphs with `graphs`)."""
        return self._pretrained(x_t, t, cond, uncond, guidance_scale)

    # -- the estimator's own training -----------------------------------------------------------------------

    def update_estimator(self, generator: torch.Generator | None = None,
                         rows: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """cfg.lora_steps_per_iter AdamW steps of the LoRA + camera MLP on the renders stored by `loss` since the
        last update (all particles), each at its own random t in [lora_t_min, lora_t_max]:
        min ‖ε_φ(x_t, t, c, y) − ε‖², the camera c zeroed on a cfg.camera_dropout share of the steps (so ε_φ
        also learns the camera-free score, as both references do). t and the noise come from `rows` (one
        generator per stored render) when given, else from `generator`, which draws the dropout. Returns the last
        step's loss, a 0-dim tensor (reading it waits for the GPU; with overlap, read it after the next `loss`)."""
        if self.guidance != "vsd" or not self._batch:
            return torch.zeros(())
        shape = self._batch[-1][0].shape[1:]
        batch = [b for b in self._batch if b[0].shape[1:] == shape]
        self._batch_used = True
        return self.updates.run(lambda: self._update(batch, generator, rows),
                                reads=[tensor for row in batch for tensor in row])

    def _update(self, batch: list, generator, rows) -> torch.Tensor:
        x0, c2w, cond = (torch.cat(parts) for parts in zip(*batch))
        for _ in range(self.cfg.lora_steps_per_iter):
            # Random numbers come from the job's generators (one per row where given), outside any captured graph.
            t = self._sample_t(x0.shape[0], self.cfg.lora_t_min, self.cfg.lora_t_max, rows or generator)
            noise = self._noise(x0, rows or generator)
            dropped = self.cfg.camera_dropout > 0 and self._uniform(generator) < self.cfg.camera_dropout
            loss = self._train(x0, t, noise, torch.zeros_like(c2w) if dropped else c2w, cond)
        return loss.detach()

    def _train_step(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, c2w: torch.Tensor,
                    cond: torch.Tensor) -> torch.Tensor:
        """One AdamW step of the LoRA + camera MLP on ‖ε_φ(x_t, t, c, y) − ε‖²; returns the loss (no sync)."""
        ab = self.prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        self.optimizer.zero_grad(set_to_none=True)
        # Backward inside the context: disabling the adapter clears its requires_grad, which drops the grads.
        with self._estimator(c2w):
            loss = ((self.prior.unet_eps(x_t, t, cond, unet=self.unet) - noise) ** 2).mean()
            loss.backward()
            if self.reduce_grads is not None:
                self.reduce_grads([p for g in self.optimizer.param_groups for p in g["params"]], x0.shape[0])
        self.optimizer.step()
        return loss.detach()

    # -- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        self.updates.wait()
        if self.guidance != "vsd":
            return {"guidance": self.guidance}
        return {
            "guidance": self.guidance,
            "lora": {name: p.detach().cpu().clone() for name, p in self.lora_params.items()},
            "camera": self.camera.state_dict() if self.camera is not None else None,
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("guidance") != self.guidance:
            raise ValueError(f"Checkpoint holds a '{state.get('guidance')}' estimator, not '{self.guidance}'.")
        if self.guidance != "vsd":
            return
        self.updates.wait()
        missing = set(self.lora_params) ^ set(state["lora"])
        if missing:
            raise ValueError(f"LoRA checkpoint does not match this UNet ({len(missing)} tensors differ).")
        with torch.no_grad():
            for name, param in self.lora_params.items():
                param.copy_(state["lora"][name])
        if self.camera is not None and state.get("camera") is not None:
            self.camera.load_state_dict(state["camera"])
        capturable = [g["capturable"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        # A checkpoint of a job run without graphs (or the other way round) keeps this estimator's own mode: the
        # saved hyper-parameters would otherwise switch it. Step counts live where that mode reads them (torch's
        # AdamW: on the device when capturable or fused, on the CPU otherwise).
        for group, keep in zip(self.optimizer.param_groups, capturable):
            group["capturable"] = keep
            for p in group["params"]:
                step = self.optimizer.state.get(p, {}).get("step")
                if torch.is_tensor(step):
                    where = p.device if keep or group.get("fused") else "cpu"
                    self.optimizer.state[p]["step"] = step.to(where, torch.float32)

    def close(self) -> None:
        """Detach the estimator from the shared UNet (the prior stays loaded for the next job)."""
        self.updates.wait()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.lora_params:
            self.unet.delete_adapters(ADAPTER)
            self.lora_params = {}
        self.unet = None  # a reference layout's copy is released
        if self.captures is not None:
            self.captures.release()
        self._batch = []
