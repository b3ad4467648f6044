"""`TriMesh`, the triangle mesh every stage and the exporter pass around, and the regularisers of its surface."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class TriMesh:
    """A triangle mesh: positions [V,3] float, faces [F,3] int64 (outward, counter-clockwise winding)."""

    positions: torch.Tensor
    faces: torch.Tensor

    def face_normals(self) -> torch.Tensor:
        """Unnormalised face normals (length = twice the area)."""
        p = self.positions[self.faces]
        return torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])

    def vertex_normals(self) -> torch.Tensor:
        """Area-weighted unit vertex normals."""
        fn = self.face_normals()
        vn = torch.zeros_like(self.positions)
        for k in range(3):
            vn = vn.index_add(0, self.faces[:, k], fn)
        return nn.functional.normalize(vn, dim=-1, eps=1e-12)

    def detach(self) -> "TriMesh":
        return TriMesh(self.positions.detach(), self.faces)

    def to(self, device) -> "TriMesh":
        return TriMesh(self.positions.to(device), self.faces.to(device))

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique undirected edges [E,2] and, per face side (3F, in face order), the index of its edge (found
        once per mesh: both regularisers of a geometry step read them)."""
        return self._edges

    @functools.cached_property
    def _edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        sides = torch.cat([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        sides = torch.sort(sides, dim=-1).values
        n = max(self.positions.shape[0], 1)
        keys, inverse = torch.unique(sides[:, 0] * n + sides[:, 1], return_inverse=True)  # 1-D: a fast sort
        return torch.stack([keys // n, keys % n], -1), inverse

    def without_small_parts(self, min_fraction: float) -> "TriMesh":
        """The mesh without its floaters: connected parts (sharing vertices) whose surface area is below
        `min_fraction` of the largest part's are dropped, and so are the vertices no face uses any more."""
        n_faces = self.faces.shape[0]
        if min_fraction <= 0 or n_faces == 0:
            return self
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        faces = self.faces.cpu().numpy()
        n_verts = self.positions.shape[0]
        # Face i links its three vertices through an extra graph node n_verts + i.
        rows = np.repeat(np.arange(n_faces) + n_verts, 3)
        graph = coo_matrix((np.ones(3 * n_faces, dtype=np.int8), (rows, faces.reshape(-1))),
                           shape=(n_verts + n_faces,) * 2)
        _, labels = connected_components(graph, directed=False)
        part = labels[n_verts:]
        area = np.bincount(part, weights=self.face_normals().detach().norm(dim=-1).double().cpu().numpy())
        keep = torch.from_numpy(area[part] >= min_fraction * area.max()).to(self.faces.device)
        faces_kept = self.faces[keep]
        used = torch.zeros(n_verts, dtype=torch.bool, device=self.faces.device)
        used[faces_kept.reshape(-1)] = True
        new_index = torch.cumsum(used.long(), 0) - 1
        return TriMesh(self.positions[used], new_index[faces_kept])

    def sample_surface(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points [n,3] uniformly distributed over the surface area."""
        gen_device = generator.device if generator is not None else "cpu"
        area = self.face_normals().detach().norm(dim=-1)
        face = torch.multinomial(area.to(gen_device), n, replacement=True, generator=generator)
        r = torch.rand(n, 2, generator=generator, device=gen_device)
        flip = r.sum(-1) > 1  # fold the unit square onto the triangle
        r = torch.where(flip[:, None], 1 - r, r).to(self.positions)
        p = self.positions[self.faces[face.to(self.faces.device)]]
        return p[:, 0] + r[:, :1] * (p[:, 1] - p[:, 0]) + r[:, 1:] * (p[:, 2] - p[:, 0])


def normal_consistency(mesh: TriMesh) -> torch.Tensor:
    """Mean (1 − cos) between the normals of faces sharing an edge (the official code's): penalises creases and
    folded triangles."""
    _, side_edge = mesh.edges()
    n_faces = mesh.faces.shape[0]
    face_of_side = torch.arange(3 * n_faces, device=side_edge.device) % n_faces
    order = torch.argsort(side_edge, stable=True)
    e, f = side_edge[order], face_of_side[order]
    pair = e[1:] == e[:-1]  # a manifold mesh lists each edge exactly twice
    if not pair.any():
        return mesh.positions.sum() * 0
    normals = nn.functional.normalize(mesh.face_normals(), dim=-1, eps=1e-12)
    cos = (normals[f[:-1][pair]] * normals[f[1:][pair]]).sum(-1)
    return (1 - cos).mean()


def vertex_normal_consistency(mesh: TriMesh) -> torch.Tensor:
    """Mean (1 − cos) between the vertex normals at the two ends of each edge (threestudio's
    Mesh.normal_consistency): smooths the shading normals across the whole surface."""
    edges, _ = mesh.edges()
    if edges.shape[0] == 0:
        return mesh.positions.sum() * 0
    normals = mesh.vertex_normals()
    return (1 - nn.functional.cosine_similarity(normals[edges[:, 0]], normals[edges[:, 1]], dim=-1)).mean()


def laplacian_smoothness(mesh: TriMesh) -> torch.Tensor:
    """Mean over vertices of ‖L·v‖ with the uniform graph Laplacian L = D − A, i.e. ‖Σ_neighbours (v − u)‖
    (both references' laplacian loss, unsquared): pulls spikes and floaters' jagged edges in."""
    edges, _ = mesh.edges()
    if edges.shape[0] == 0:
        return mesh.positions.sum() * 0
    p = mesh.positions
    both = torch.cat([edges, edges.flip(1)])
    lap = torch.zeros_like(p).index_add(0, both[:, 0], p[both[:, 0]] - p[both[:, 1]])
    return lap.norm(dim=-1).mean()
