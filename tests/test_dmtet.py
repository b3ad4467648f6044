"""DMTet: the generated tetrahedral grid, marching tetrahedra on analytic SDFs, initialisation from a density."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from prolific.field.dmtet import DMTet, TetGrid, make_tet_grid, marching_tets
from prolific.field.trimesh import TriMesh, laplacian_smoothness, normal_consistency, vertex_normal_consistency


def mesh_stats(mesh: TriMesh) -> dict:
    f = mesh.faces
    directed = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    undirected, counts = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)
    p = mesh.positions.detach().double()[f]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    return {
        "edge_face_counts": counts,
        "directed_unique": torch.unique(directed, dim=0).shape[0] == directed.shape[0],
        "euler": mesh.positions.shape[0] - undirected.shape[0] + f.shape[0],
        "area": float(cross.norm(dim=-1).sum() / 2),
        "volume": float((p[:, 0] * torch.linalg.cross(p[:, 1], p[:, 2])).sum() / 6),
    }


def test_grid_is_conforming_and_positively_oriented():
    verts, tets = make_tet_grid(3, 1.0)
    assert verts.shape == (64, 3) and tets.shape == (6 * 27, 4)
    p = verts.double()[tets]
    vol = torch.linalg.det(torch.stack([p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]], -1)) / 6
    assert (vol > 0).all()
    assert float(vol.sum()) == pytest.approx(8.0)  # the tets tile the cube exactly
    # Conforming: every triangle is shared by two tets inside the cube and by one on its surface.
    tri = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    tri, counts = torch.unique(torch.sort(tri, dim=1).values, dim=0, return_counts=True)
    on_surface = (verts[tri].abs() == 1).all(1).any(-1)
    assert (counts[on_surface] == 1).all() and (counts[~on_surface] == 2).all()


def test_sphere_is_closed_manifold_with_the_right_area_and_volume():
    """Grid spacing h = 2/res. The vertices lie on the exact SDF's linear zero crossings along edges of length
    <= √3h (error <= 3h²/(8r') with r' = r − √3h, the smallest radius an edge reaches), and each flat triangle
    lies within a tet (diameter √3h), so it sags at most h²/(2r) below the sphere. With δ the sum, the volume's
    relative error is <= 3δ/r and the area's <= 2δ/r plus the tilt of the faces; we allow 3δ/r for both."""
    res, r = 24, 0.55
    centre = torch.tensor([0.07, -0.05, 0.03])
    grid = TetGrid.build(res, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.copy_((grid.vertices - centre).norm(dim=-1) - r)
    mesh = dmtet.mesh()
    s = mesh_stats(mesh)
    assert (s["edge_face_counts"] == 2).all()  # closed, and manifold along every edge
    assert s["directed_unique"]  # consistent winding: neighbours traverse their shared edge in opposite senses
    assert s["euler"] == 2  # a single sphere-like surface
    h = 2.0 / res
    delta = 3 * h**2 / (8 * (r - math.sqrt(3) * h)) + h**2 / (2 * r)
    tol = 3 * delta / r
    assert s["volume"] > 0  # outward normals
    assert abs(s["volume"] / (4 / 3 * math.pi * r**3) - 1) < tol
    assert abs(s["area"] / (4 * math.pi * r**2) - 1) < tol
    radial = ((mesh.positions.detach() - centre).norm(dim=-1) - r).abs()
    assert float(radial.max()) < delta


def test_marching_is_differentiable_and_local():
    grid = TetGrid.build(8, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.copy_(grid.vertices.norm(dim=-1) - 0.5)
    mesh = dmtet.mesh()
    mesh.positions.norm(dim=-1).sum().backward()
    touched = dmtet.sdf.grad != 0
    assert touched.any() and dmtet.deform.grad.abs().sum() > 0
    # Only vertices at the ends of crossing edges move the surface: those within one cell diagonal of it.
    near = (grid.vertices.norm(dim=-1) - 0.5).abs() <= math.sqrt(3) * grid.cell
    assert not (touched & ~near).any()


def test_deformation_is_bounded_by_half_a_cell():
    grid = TetGrid.build(4, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.deform.fill_(100.0)
    assert float((dmtet.vertices().detach() - grid.vertices).abs().max()) <= 0.5 * grid.cell + 1e-6


def test_boundary_stays_outside_so_the_surface_stays_closed():
    grid = TetGrid.build(6, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.fill_(-1.0)  # everything "inside": the surface must wrap just inside the grid's boundary
    s = mesh_stats(dmtet.mesh())
    assert (s["edge_face_counts"] == 2).all() and s["euler"] == 2 and s["volume"] > 0


def test_empty_level_set_gives_an_empty_mesh():
    verts, tets = make_tet_grid(2, 1.0)
    mesh = marching_tets(verts, torch.ones(verts.shape[0]), tets)
    assert mesh.positions.shape == (0, 3) and mesh.faces.shape == (0, 3)


HALF = torch.tensor([0.45, 0.3, 0.35])
CENTRE = torch.tensor([0.05, -0.04, 0.02])


def box_sdf(x: torch.Tensor) -> torch.Tensor:
    q = (x - CENTRE).abs() - HALF
    return q.clamp(min=0).norm(dim=-1) + q.max(-1).values.clamp(max=0)


def box_surface_samples(n: int, generator: torch.Generator) -> torch.Tensor:
    areas = torch.stack([HALF[1] * HALF[2], HALF[0] * HALF[2], HALF[0] * HALF[1]]).repeat(2)
    side = torch.multinomial(areas, n, replacement=True, generator=generator)
    g = (torch.rand(n, 3, generator=generator) * 2 - 1) * HALF
    axis = side % 3
    g[torch.arange(n), axis] = torch.where(side < 3, 1.0, -1.0) * HALF[axis]
    return g + CENTRE


def test_mesh_from_a_box_density_matches_the_box():
    """A NeRF-like density of a box: 10·sigmoid(−sdf/0.05), so density 5 (the threshold) is exactly the box.

    Flat faces come out exact up to the sigmoid's curvature along an edge; only cells cut by the box's edges
    and corners bevel, by less than a cell. Hence: symmetric mean Chamfer < 0.15 h (the beveled band covers
    ~20% of the area at res 24 with errors < h/2, plus ~0.05 h of surface-sampling spacing) and every mesh
    point within one cell h of the box; the volume within 5% (bevels only remove material along 8.8 m of edges)."""
    res = 24
    h = 2.0 / res
    dmtet = DMTet(TetGrid.build(res, 1.0))
    dmtet.init_from_density(lambda x: 10 * torch.sigmoid(-box_sdf(x) / 0.05), threshold=5.0, mode="metric")
    mesh = dmtet.mesh().detach()
    gen = torch.Generator().manual_seed(0)
    on_mesh = mesh.sample_surface(20000, gen)
    on_box = box_surface_samples(2000, gen)
    mesh_to_box = box_sdf(on_mesh).abs()
    box_to_mesh = torch.cat([torch.cdist(on_box[i:i + 500], on_mesh).min(1).values for i in range(0, 2000, 500)])
    chamfer = 0.5 * (float(mesh_to_box.mean()) + float(box_to_mesh.mean()))
    assert chamfer < 0.15 * h
    assert float(mesh_to_box.max()) < h
    box_volume = float(HALF.prod() * 8)
    assert mesh_stats(mesh)["volume"] == pytest.approx(box_volume, rel=0.05)


def test_init_scales_the_sdf_to_metres():
    """After init from a density, the SDF near the surface reads as a distance (the rescaling), whatever the
    density's units: a learning rate of 1e-2 then moves the surface by about a centimetre."""
    grid = TetGrid.build(16, 1.0)
    dmtet = DMTet(grid)
    dist = grid.vertices.norm(dim=-1) - 0.5
    dmtet.init_from_density(lambda x: 400.0 * (0.5 - x.norm(dim=-1)) + 5.0, threshold=5.0, mode="metric")
    near = dist.abs() < 2 * grid.cell
    assert torch.allclose(dmtet.sdf[near], dist[near], rtol=0.02, atol=1e-3)


def test_regularisers_prefer_smooth_surfaces():
    grid = TetGrid.build(12, 1.0)
    smooth, bumpy = DMTet(grid), DMTet(grid)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        smooth.sdf.copy_(grid.vertices.norm(dim=-1) - 0.53)
        bumpy.sdf.copy_(smooth.sdf + 0.08 * torch.randn(smooth.sdf.shape, generator=gen))
    a, b = smooth.mesh(), bumpy.mesh()
    assert normal_consistency(a).item() < normal_consistency(b).item()
    assert vertex_normal_consistency(a).item() < vertex_normal_consistency(b).item()
    assert laplacian_smoothness(a).item() < laplacian_smoothness(b).item()
    normal_consistency(b).backward()
    assert bumpy.sdf.grad.abs().sum() > 0


def test_laplacian_is_the_unsquared_norm_of_the_graph_laplacian():
    """Both references' ‖L·v‖ with L = D − A, averaged over vertices: on a regular tetrahedron each vertex's
    three neighbours sum to −v (centred), so ‖3v − (−v)‖ = 4‖v‖."""
    positions = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    mesh = TriMesh(positions, torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]))
    assert laplacian_smoothness(mesh).item() == pytest.approx(4 * math.sqrt(3))


def test_floaters_are_dropped_and_the_object_and_its_real_parts_kept():
    """A body (radius 0.5), a second part of a third of its size (radius 0.3, kept at 5%) and two specks
    (radius 0.06: ~1.5% of the body's area each) → the specks go, the mesh stays closed, nothing else changes."""
    verts, tets = make_tet_grid(48, 1.0)

    def ball(c, r):
        return (verts - torch.tensor(c)).norm(dim=-1) - r

    sdf = torch.stack([ball((-0.3, 0, 0), 0.5), ball((0.55, 0.0, 0.0), 0.3), ball((0.6, 0.6, 0.6), 0.06),
                       ball((-0.7, -0.7, 0.7), 0.06)]).amin(0)
    mesh = marching_tets(verts, sdf, tets)
    clean = mesh.without_small_parts(0.05)
    whole = mesh_stats(mesh)
    stats = mesh_stats(clean)
    assert (stats["edge_face_counts"] == 2).all() and stats["euler"] == 2 * 2  # two closed spheres
    assert 0.9 * whole["area"] < stats["area"] < whole["area"] - 2 * 0.5 * 4 * math.pi * 0.06**2
    assert clean.positions.shape[0] == int(torch.unique(clean.faces).numel())  # no stray vertices
    assert torch.equal(mesh.without_small_parts(0.0).faces, mesh.faces)
    assert mesh.without_small_parts(1.0).faces.shape[0] < clean.faces.shape[0]  # only the body is left


def _ball_density(centre, radius):
    from types import SimpleNamespace

    return SimpleNamespace(density=lambda x: 50.0 * torch.sigmoid(-((x - centre).norm(dim=-1) - radius) / 0.01))


def test_the_initial_grid_is_fitted_to_the_object_and_resolves_it_finer():
    """geometry.fit_grid (both references): the grid spans the object's box plus 10% per side, so a small
    object gets cells ~2x finer and a surface closer to the true one than on the whole cube."""
    from prolific.config import make_config
    from prolific.stages.geometry import initial_dmtet

    centre, radius = torch.tensor([0.2, -0.1, 0.15]), 0.3
    nerf = _ball_density(centre, radius)
    grid = TetGrid.build(16, 1.0)
    gcfg = make_config("x", "test").geometry
    errors = {}
    for fit in (True, False):
        dmtet = initial_dmtet(grid, nerf, dataclasses.replace(gcfg, fit_grid=fit, sdf_init="metric"))
        mesh = dmtet.mesh().detach()
        errors[fit] = float(((mesh.positions - centre).norm(dim=-1) - radius).abs().mean())
        if fit:
            lo, hi = dmtet.box
            assert (lo < centre - radius).all() and (hi > centre + radius).all()
            assert (hi - lo).max() < 2 * radius + 4 * grid.cell  # the ball's size, a cell and 10% each side
            assert float(dmtet.cell.max()) < grid.cell / 2
            assert (mesh.positions >= lo).all() and (mesh.positions <= hi).all()
        else:
            assert torch.equal(dmtet.box, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert errors[True] < 0.5 * errors[False]


def test_the_auto_level_keeps_a_translucent_nerf_whole_and_a_dense_one_at_its_edge(capsys):
    """geometry.density_threshold "auto" (threestudio's): the mean density where positive, times
    geometry.auto_level_scale (the demo's 2). A short run's NeRF is a translucent cloud (the demo's peak at
    7-13): a fixed level 5 keeps only its core, auto most of it. On a dense object with a sharp edge auto finds
    that edge."""
    from types import SimpleNamespace

    from prolific.config import make_config
    from prolific.stages.geometry import initial_dmtet, surface_level

    grid = TetGrid.build(24, 1.0)
    gcfg = dataclasses.replace(make_config("x", "demo").geometry, tet_res=24)
    assert gcfg.density_threshold == "auto"
    cloud = SimpleNamespace(density=lambda x: 8.0 * torch.exp(-x.square().sum(-1) / (2 * 0.25 ** 2)))
    volumes = {level: mesh_stats(initial_dmtet(grid, cloud, dataclasses.replace(gcfg, density_threshold=level))
                                 .mesh())["volume"] for level in ("auto", 5.0)}
    sigma = cloud.density(grid.vertices)
    mean = float(sigma[sigma > 1e-5].mean())
    assert surface_level(sigma, ~grid.boundary, "auto") == pytest.approx(mean)
    assert surface_level(sigma, ~grid.boundary, "auto", gcfg.auto_level_scale) == pytest.approx(2 * mean)  # the demo's
    assert volumes["auto"] > 4 * volumes[5.0]
    threestudio = mesh_stats(initial_dmtet(grid, cloud, dataclasses.replace(gcfg, auto_level_scale=1.0)).mesh())
    assert threestudio["volume"] > 1.2 * volumes["auto"]  # twice the level: a little less of the cloud's fog
    radius = 0.4
    ball = initial_dmtet(grid, _ball_density(torch.zeros(3), radius), gcfg).mesh().detach()
    assert float((ball.positions.norm(dim=-1) - radius).abs().mean()) < 0.5 * grid.cell
    empty = torch.zeros_like(sigma)
    assert surface_level(empty, ~grid.boundary, "auto") == 0.0  # nothing there: half of a zero peak, no error
    assert "never reaches density" in capsys.readouterr().err


def test_the_clamped_init_keeps_the_object_with_an_sdf_in_density_units():
    """geometry.sdf_init = clamped (both references): clamp(threshold − σ, −1, 1); the level set is the same
    object, its vertices sit where the clamped values cross zero."""
    from prolific.config import make_config
    from prolific.stages.geometry import initial_dmtet

    centre, radius = torch.tensor([0.0, 0.0, 0.0]), 0.4
    grid = TetGrid.build(16, 1.0)
    gcfg = make_config("x", "test").geometry
    clamped = initial_dmtet(grid, _ball_density(centre, radius), gcfg)
    assert gcfg.sdf_init == "clamped" and clamped.sdf.abs().max() <= 1.0 and (clamped.sdf.abs() == 1.0).any()
    volume = mesh_stats(clamped.mesh())["volume"]
    assert volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=0.15)
