"""Triangle rasterization behind one interface: nvdiffrast's CUDA rasterizer when importable, else pure PyTorch.

Both follow nvdiffrast's conventions, so callers never care which one runs:
- `rasterize(clip_pos [B,V,4], faces [F,3], (H, W)) -> rast [B,H,W,4]` holding (u, v, z/w, triangle_id + 1) and
  zeros where no triangle covers the pixel centre. u and v are the perspective-correct barycentric weights of the
  triangle's first and second vertex (the third gets 1 − u − v). Row 0 is clip-space y = −1 (the bottom: images
  come out upside down, as in OpenGL). The nearest fragment (smallest z/w) wins; no face culling.
- `interpolate(attr [V,C] or [B,V,C], rast, faces) -> [B,H,W,C]`, differentiable w.r.t. attr and rast.
- `antialias(color, rast, clip_pos, faces)`: nvdiffrast's silhouette antialiasing (gives position gradients at
  silhouettes); the PyTorch fallback returns the colour unchanged.
"""
from __future__ import annotations

import glob
import sys

import torch


class Rasterizer:
    name = "base"

    def rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def antialias(self, color: torch.Tensor, rast: torch.Tensor, clip_pos: torch.Tensor,
                  faces: torch.Tensor) -> torch.Tensor:
        return color


def make_rasterizer(device: torch.device | str) -> Rasterizer:
    """nvdiffrast (CUDA context, no OpenGL) on a CUDA device when it imports, else the PyTorch rasterizer."""
    device = torch.device(device)
    if device.type == "cuda":
        dr = import_nvdiffrast()
        if dr is not None:
            return NvdiffrastRasterizer(dr, device)
    return TorchRasterizer()


def import_nvdiffrast():
    """nvdiffrast.torch with its CUDA plugin loaded, or None when it is not installed or does not build."""
    try:
        import nvdiffrast.torch as dr
        import nvdiffrast.torch.ops as ops
    except ImportError:
        return None
    try:
        try:
            ops._get_plugin(gl=False)
        except ModuleNotFoundError:
            # Under torch 2.11 the JIT-built plugin lands in torch's extension build folder but is not importable
            # from there; put that folder on the path and load it again.
            from torch.utils import cpp_extension
            sys.path += glob.glob(cpp_extension._get_build_directory("", False) + "/nvdiffrast*")
            ops._get_plugin(gl=False)
    except Exception as err:  # a failed JIT build must not stop the job: the PyTorch rasterizer still works
        print(f"nvdiffrast unavailable ({type(err).__name__}: {err}); using the PyTorch rasterizer", file=sys.stderr)
        return None
    return dr


def _batched(clip_pos: torch.Tensor) -> torch.Tensor:
    return clip_pos[None] if clip_pos.dim() == 2 else clip_pos


class NvdiffrastRasterizer(Rasterizer):
    name = "nvdiffrast"

    def __init__(self, dr, device: torch.device):
        self.dr = dr
        self.ctx = dr.RasterizeCudaContext(device=device)

    def rasterize(self, clip_pos, faces, resolution):
        clip_pos = _batched(clip_pos).float().contiguous()
        h, w = resolution
        # The CUDA rasterizer wants sizes divisible by 8: draw into a padded viewport whose first h rows and w
        # columns are exactly the requested one, then crop.
        ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
        if (ph, pw) != (h, w):
            sx, sy = w / pw, h / ph
            x, y, z, wc = clip_pos.unbind(-1)
            clip_pos = torch.stack([x * sx + wc * (sx - 1), y * sy + wc * (sy - 1), z, wc], -1).contiguous()
        rast, _ = self.dr.rasterize(self.ctx, clip_pos, faces.int().contiguous(), resolution=[ph, pw])
        return rast[:, :h, :w].contiguous()

    def interpolate(self, attr, rast, faces):
        attr = _batched(attr).float().contiguous()
        out, _ = self.dr.interpolate(attr, rast, faces.int().contiguous())
        return out

    def antialias(self, color, rast, clip_pos, faces):
        h, w = rast.shape[1:3]
        if h % 8 or w % 8:
            return color
        return self.dr.antialias(color.contiguous(), rast, _batched(clip_pos).float().contiguous(),
                                 faces.int().contiguous())


class TorchRasterizer(Rasterizer):
    """Pure PyTorch rasterizer: enumerates each triangle's pixel bounding box, vectorised over all triangles.

    Pixel coverage is decided without gradients; the winning fragments' barycentrics are then recomputed from the
    clip positions with autograd, so the output carries gradients w.r.t. the positions like nvdiffrast's.
    """

    name = "torch"

    def __init__(self, max_fragments: int = 1 << 22):
        self.max_fragments = max_fragments  # bounds the memory of one chunk of candidate fragments

    def rasterize(self, clip_pos, faces, resolution):
        clip_pos = _batched(clip_pos).float()
        faces = faces.long()
        h, w = resolution
        out = []
        for b in range(clip_pos.shape[0]):
            tri = self._visible_triangle(clip_pos[b].detach(), faces, h, w)
            out.append(self._fragments(clip_pos[b], faces, tri, h, w))
        return torch.stack(out)

    @staticmethod
    def _screen(clip: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Clip positions [...,4] to (pixel x, pixel y, z/w); pixel centres sit on whole numbers."""
        ndc = clip[..., :3] / clip[..., 3:4]
        return torch.stack([(ndc[..., 0] + 1) * 0.5 * w - 0.5, (ndc[..., 1] + 1) * 0.5 * h - 0.5, ndc[..., 2]], -1)

    @staticmethod
    def _barycentric(p: torch.Tensor, px: torch.Tensor, py: torch.Tensor):
        """Screen-space barycentrics of pixel centres (px, py) in triangles p [N,3,3] (x, y, z/w)."""
        x0, y0 = p[:, 0, 0], p[:, 0, 1]
        x1, y1 = p[:, 1, 0], p[:, 1, 1]
        x2, y2 = p[:, 2, 0], p[:, 2, 1]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        b0 = ((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) / area
        b1 = ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) / area
        return b0, b1, 1 - b0 - b1

    def _visible_triangle(self, clip: torch.Tensor, faces: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Index of the nearest triangle covering each pixel centre [h*w], or -1."""
        device = clip.device
        n_faces = faces.shape[0]
        best_z = torch.full((h * w,), float("inf"), device=device)
        best_t = torch.full((h * w,), n_faces, dtype=torch.long, device=device)
        if n_faces == 0:
            return best_t.new_full((h * w,), -1)
        tri_clip = clip[faces]  # [F,3,4]
        p = self._screen(tri_clip, h, w)
        ok = (tri_clip[..., 3] > 1e-8).all(-1)  # triangles crossing the camera plane are dropped, not clipped
        x0 = p[..., 0].amin(-1).ceil().clamp(min=0)
        x1 = p[..., 0].amax(-1).floor().clamp(max=w - 1)
        y0 = p[..., 1].amin(-1).ceil().clamp(min=0)
        y1 = p[..., 1].amax(-1).floor().clamp(max=h - 1)
        ok &= (x1 >= x0) & (y1 >= y0) & torch.isfinite(p).all(-1).all(-1)
        area = ((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
        ok &= area != 0
        ids = torch.nonzero(ok).squeeze(1)
        bw = (x1 - x0 + 1).long()[ids]
        count = bw * (y1 - y0 + 1).long()[ids]
        # Chunks of triangles whose bounding boxes hold at most max_fragments pixels (a single huge triangle
        # still goes in one chunk of its own).
        ends = torch.cumsum(count, 0)
        start = 0
        while start < ids.shape[0]:
            base = ends[start - 1] if start else ends.new_zeros(())
            stop = max(int(torch.searchsorted(ends, base + self.max_fragments, right=True)), start + 1)
            sel, n = ids[start:stop], count[start:stop]
            tri = torch.repeat_interleave(sel, n)
            first = torch.cumsum(n, 0) - n
            local = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(first, n)
            width = torch.repeat_interleave(bw[start:stop], n)
            px = x0[tri] + (local % width)
            py = y0[tri] + torch.div(local, width, rounding_mode="floor")
            b0, b1, b2 = self._barycentric(p[tri], px, py)
            z = b0 * p[tri, 0, 2] + b1 * p[tri, 1, 2] + b2 * p[tri, 2, 2]
            inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (z >= -1) & (z <= 1)
            pix = (py.long() * w + px.long())[inside]
            tri, z = tri[inside], z[inside]
            # Depth test within the chunk, ties to the lowest triangle id, then merge with the earlier chunks.
            cz = torch.full_like(best_z, float("inf")).scatter_reduce(0, pix, z, "amin")
            win = z == cz[pix]
            ct = torch.full_like(best_t, n_faces).scatter_reduce(0, pix[win], tri[win], "amin")
            better = (cz < best_z) | ((cz == best_z) & (ct < best_t))
            best_z = torch.where(better, cz, best_z)
            best_t = torch.where(better, ct, best_t)
            start = stop
        return torch.where(best_t < n_faces, best_t, -1)

    def _fragments(self, clip: torch.Tensor, faces: torch.Tensor, tri: torch.Tensor, h: int, w: int):
        """(u, v, z/w, id+1) [h,w,4] of the chosen triangles, differentiable w.r.t. clip."""
        rast = clip.new_zeros(h * w, 4)
        pix = torch.nonzero(tri >= 0).squeeze(1)
        if pix.numel() == 0:
            return rast.reshape(h, w, 4)
        t = tri[pix]
        tri_clip = clip[faces[t]]  # [N,3,4]
        p = self._screen(tri_clip, h, w)
        px = (pix % w).to(clip.dtype)
        py = torch.div(pix, w, rounding_mode="floor").to(clip.dtype)
        b0, b1, b2 = self._barycentric(p, px, py)
        z = b0 * p[:, 0, 2] + b1 * p[:, 1, 2] + b2 * p[:, 2, 2]
        # Perspective correction: screen-space weights divided by each vertex's w, renormalised.
        q = torch.stack([b0, b1, b2], -1) / tri_clip[..., 3]
        q = q / q.sum(-1, keepdim=True)
        values = torch.stack([q[:, 0], q[:, 1], z, (t + 1).to(clip.dtype)], -1)
        return rast.index_put((pix,), values).reshape(h, w, 4)

    def interpolate(self, attr, rast, faces):
        faces = faces.long()
        tri = rast[..., 3].long() - 1  # [B,H,W]
        covered = (tri >= 0)[..., None]
        corner = faces[tri.clamp(min=0)]  # [B,H,W,3]
        if attr.dim() == 2:
            a = attr[corner]  # [B,H,W,3,C]
        else:
            batch = torch.arange(rast.shape[0], device=rast.device)[:, None, None, None]
            a = attr.expand(rast.shape[0], -1, -1)[batch, corner]
        u, v = rast[..., 0:1], rast[..., 1:2]
        out = u * a[..., 0, :] + v * a[..., 1, :] + (1 - u - v) * a[..., 2, :]
        return torch.where(covered, out, torch.zeros_like(out))
