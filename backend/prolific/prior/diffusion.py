"""The pretrained text-to-image prior: loading (safetensors only), prompt embeddings, noise prediction with CFG.

A model is a diffusers folder with the subfolders unet, text_encoder, tokenizer, scheduler and, for latent
models, vae. Without a vae folder the model is pixel-space: its UNet denoises 3-channel images directly.
All weights are frozen; the only trainable parameters ever attached to the UNet are the VSD LoRA (prior/vsd.py).
"""
from __future__ import annotations

import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelNotFound
from .prompts import view_prompts

WEIGHTED = ("unet", "vae", "text_encoder")
# What is fetched from the Hub: configs, tokenizer and the full-precision safetensors weights (sharded or not).
HUB_PATTERNS = [
    "model_index.json", "scheduler/*.json", "tokenizer/*", "*/config.json",
    "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model-*.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors", "text_encoder/model-*.safetensors", "text_encoder/model.safetensors.index.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = ("1", "ON", "YES", "TRUE")


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε_u + s (ε_c − ε_u)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@dataclass
class PromptEmbeddings:
    """Text embeddings of one prompt: one conditional embedding per view direction, the bare prompt's and the
    negative prompt's."""

    prompt: str
    negative_prompt: str
    cond: dict[str, torch.Tensor]  # direction -> [1, L, D]
    uncond: torch.Tensor  # [1, L, D]
    bare: torch.Tensor  # [1, L, D]: the prompt without a view suffix
    view_dependent: bool = True

    def get(self, directions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unknown = [d for d in directions if d not in self.cond]
        if unknown:
            raise ValueError(f"Unknown view directions {unknown}; expected some of {list(self.cond)}.")
        cond = torch.cat([self.cond[d] for d in directions])
        return cond, self.uncond.expand(len(directions), -1, -1)

    def get_bare(self, n: int) -> torch.Tensor:
        """The bare prompt's embedding for a batch of n [n, L, D]."""
        return self.bare.expand(n, -1, -1)


@dataclass
class DiffusionPrior:
    unet: torch.nn.Module
    vae: torch.nn.Module | None
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    source: str = ""
    _embeddings: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.pixel_space = self.vae is None
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.pixel_space:
            self.image_size = int(self.unet.config.sample_size)
        else:
            # The UNet's latent size times the VAE's downsampling (512 for SD 1.x/2.x-base, 768 for SD 2.x).
            self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
            self.image_size = int(self.unet.config.sample_size) * self.vae_scale

    # -- images <-> the UNet's input space -------------------------------------------------------------------

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] → x0 in the UNet's input space (fp32, differentiable w.r.t. rgb).

        Renders are resized (bilinear) to the size the model was trained on. Latents use the VAE posterior mean
        (deterministic; its spread is negligible for SD) times the VAE's scaling factor.
        """
        size = self.image_size
        if rgb.shape[-2:] != (size, size):
            rgb = F.interpolate(rgb, (size, size), mode="bilinear", align_corners=False)
        x = rgb.float() * 2.0 - 1.0
        if self.pixel_space:
            return x
        latents = self.vae.encode(x.to(self.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 in the UNet's input space → [B,3,H,W] in [0,1] (previews and tests)."""
        if self.pixel_space:
            x = x0.float()
        else:
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            latents = x0 / self.vae.config.scaling_factor + shift
            x = self.vae.decode(latents.to(self.dtype)).sample.float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- text ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        # The text encoder runs once per prompt; on a GPU it waits on the CPU in between to leave room.
        self.text_encoder.to(self.device)
        try:
            hidden = self.text_encoder(ids.to(self.device))[0]
        finally:
            if self.device.type != "cpu":
                self.text_encoder.to("cpu")
        return hidden.to(self.dtype)

    def embed_prompt(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> PromptEmbeddings:
        """Embeddings of `prompt` + each view suffix (or the bare prompt for all views), of the bare prompt and
        of the negative prompt. Cached per (prompt, negative prompt, view_dependent)."""
        key = (prompt, negative_prompt, view_dependent)
        if key not in self._embeddings:
            per_view = view_prompts(prompt, view_dependent)
            directions, texts = list(per_view), list(per_view.values())
            hidden = self._encode_text(texts + [prompt, negative_prompt])
            cond = {d: hidden[i:i + 1] for i, d in enumerate(directions)}
            self._embeddings[key] = PromptEmbeddings(prompt, negative_prompt, cond, hidden[-1:], hidden[-2:-1],
                                                     view_dependent)
        return self._embeddings[key]

    # -- noise prediction ------------------------------------------------------------------------------------

    def unet_eps(self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                 unet: torch.nn.Module | None = None) -> torch.Tensor:
        """One call of `unet` (default: the prior's), its output converted to ε (fp32) whatever the model
        predicts. Not wrapped in no_grad: the VSD estimator trains through it."""
        out = (unet or self.unet)(x_t.to(self.dtype), t, encoder_hidden_states=emb.to(self.dtype)).sample.float()
        if self.prediction_type == "epsilon":
            return out
        ab = self.alphas_cumprod[t].view(-1, *([1] * (x_t.dim() - 1)))
        if self.prediction_type == "v_prediction":
            return ab.sqrt() * out + (1 - ab).sqrt() * x_t.float()
        if self.prediction_type == "sample":
            return (x_t.float() - ab.sqrt() * out) / (1 - ab).sqrt()
        raise ValueError(f"Unsupported scheduler prediction_type '{self.prediction_type}'.")

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                      guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided ε of the pretrained model, conditional and unconditional in ONE UNet call.
        At guidance_scale 1 (or without uncond) CFG reduces to the conditional prediction, so only that runs."""
        if uncond is None or guidance_scale == 1.0:
            return self.unet_eps(x_t, t, cond)
        eps_c, eps_u = self.unet_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
        return guided_eps(eps_c, eps_u, guidance_scale)


# -- loading ---------------------------------------------------------------------------------------------------

def _offline() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a usable diffusers model folder (None when it is)."""
    for name in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / name).is_dir():
            return f"{folder} has no '{name}' subfolder (expected a diffusers model folder)"
    for name in WEIGHTED:
        sub = folder / name
        if name == "vae" and not sub.is_dir():
            continue
        if not (sub / "config.json").is_file():
            return f"{sub} has no config.json"
        if not any(sub.glob("*.safetensors")):
            pickles = sorted(p.name for p in sub.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            if pickles:
                return (f"{sub} holds only pickle weights ({', '.join(pickles)}); they are refused because loading "
                        f"them can run arbitrary code. Convert the model to safetensors")
            return f"{sub} has no .safetensors weights"
    return None


def _announce_and_download(repo_id: str, cache: str) -> str:
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo_id, files_metadata=True)
    size = sum(s.size or 0 for s in info.siblings
               if any(fnmatch.fnmatch(s.rfilename, p) for p in HUB_PATTERNS))
    print(f"Downloading model '{repo_id}' (about {size / 1e9:.1f} GB) from the Hugging Face Hub into {cache} ...",
          file=sys.stderr, flush=True)
    return snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, cache_dir=cache)


def _resolve(model: str) -> Path:
    """Local folder, else HF cache, else (when allowed) the Hub. Raises ModelNotFound naming every place tried."""
    path = Path(model).expanduser()
    if path.is_dir():
        problem = _folder_problem(path)
        if problem:
            raise ModelNotFound(f"The model folder {path.resolve()} cannot be used: {problem}.")
        return path
    tried = [f"the local folder {path.absolute()} (does not exist)"]
    if path.is_file():
        raise ModelNotFound(f"'{model}' is a single file; give a diffusers model folder (with unet, text_encoder, "
                            f"tokenizer, scheduler and optionally vae subfolders) or a Hugging Face model id.")
    if not _REPO_ID.match(model) or model.count("/") > 1:
        raise ModelNotFound(f"Model '{model}' was not found. Tried: {tried[0]}; it is not a valid Hugging Face id.")

    from huggingface_hub import snapshot_download

    cache = _hub_cache()
    try:
        folder = Path(snapshot_download(model, allow_patterns=HUB_PATTERNS, cache_dir=cache, local_files_only=True))
        problem = _folder_problem(folder)
        if problem is None:
            return folder
        tried.append(f"the Hugging Face cache {cache} (incomplete: {problem})")
    except Exception:  # noqa: BLE001 - any cache miss means: not cached
        tried.append(f"the Hugging Face cache {cache} (not cached)")

    if _offline():
        tried.append("the Hugging Face Hub (skipped: HF_HUB_OFFLINE is set; unset it to allow the download)")
        raise ModelNotFound(f"Model '{model}' was not found. Tried: {'; '.join(tried)}.")
    try:
        folder = Path(_announce_and_download(model, cache))
    except Exception as err:  # noqa: BLE001 - network, auth and not-found errors all end the same way
        tried.append(f"the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        raise ModelNotFound(f"Model '{model}' was not found. Tried: {'; '.join(tried)}.") from err
    problem = _folder_problem(folder)
    if problem:
        raise ModelNotFound(f"Model '{model}' from the Hugging Face Hub cannot be used: {problem}.")
    return folder


def load_prior(model: str | None, device: torch.device, dtype: torch.dtype) -> DiffusionPrior:
    """Load a diffusers text-to-image model (folder or HF id; None = the bundled toy model), frozen, eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    if model is None:
        from .bundled import BUNDLED_MODEL_DIR
        model = str(BUNDLED_MODEL_DIR)
    folder = _resolve(str(model))
    device = torch.device(device)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True, torch_dtype=dtype)
        vae = None
        if (folder / "vae").is_dir():
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True,
                                                     dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError, KeyError) as err:
        raise ModelNotFound(f"The model at {folder} could not be loaded: {err}") from err
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.requires_grad_(False).eval()
    unet.to(device)
    if vae is not None:
        vae.to(device)
    return DiffusionPrior(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                          device=device, dtype=dtype, source=str(model))
