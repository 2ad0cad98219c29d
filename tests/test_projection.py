"""Point -> pixel pairs (cmcr_lite.data.projection) against the devkit's own projection.

Reference: ``nusc.explorer.map_pointcloud_to_image(lidar_token, camera_token)`` (nuscenes-devkit),
which reads the scan, chains lidar -> ego(lidar time) -> global -> ego(camera time) -> camera, keeps
depth > 1 m and 1 < u < W-1, 1 < v < H-1, and returns the kept pixels in point-index order.
"""
import numpy as np
import pytest

from cmcr_lite.data.nuscenes_loader import load_points
from cmcr_lite.data.projection import pose_matrix, project_points_to_cameras

UV_TOL = 0.5      # pixels
DEPTH_TOL = 1e-3  # metres
# The devkit transforms points in float32 through the global frame (coordinates ~1000 m), so its
# pixels carry errors of ~1e-3 px; a point this close to a keep threshold may go either way.
BOUNDARY_EPS = 0.01  # pixels, and metres for the depth threshold


def _ours_per_camera(keyframes, sample_token, transforms=None):
    """Our projection of one keyframe. Per camera a dict: ``idx`` kept point indices (ours),
    ``uv`` (n,2) their sub-pixel projections, and for all N points ``all_uv`` (N,2), ``all_depth``
    (N,) and ``ambiguous`` (N,) bool (within BOUNDARY_EPS of a keep threshold)."""
    lidar_sd = keyframes.lidar_record(sample_token)
    camera_sds = keyframes.camera_records(sample_token)
    points = load_points(keyframes.dataroot / lidar_sd["filename"])[:, :3].astype(np.float64)
    T, K, sizes = keyframes.projection_inputs(lidar_sd, camera_sds)
    if transforms is not None:
        T = transforms
    pair_points, pair_pixels, uv = project_points_to_cameras(points, T, K, sizes)
    out = []
    for c in range(len(camera_sds)):
        sel = pair_pixels[:, 0] == c
        cam = points @ T[c, :3, :3].T + T[c, :3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            img = cam @ K[c].T
            all_uv = img[:, :2] / img[:, 2:]
        (w, h), depth = sizes[c], cam[:, 2]
        near = lambda a, b: np.abs(a - b) < BOUNDARY_EPS  # noqa: E731
        ambiguous = near(depth, 1.0) | ((depth > 1.0 - BOUNDARY_EPS) & (
            near(all_uv[:, 0], 1) | near(all_uv[:, 0], w - 1) | near(all_uv[:, 1], 1) | near(all_uv[:, 1], h - 1)))
        out.append({"idx": pair_points[sel], "uv": uv[sel], "all_uv": all_uv, "all_depth": depth,
                    "ambiguous": ambiguous})
    return lidar_sd, camera_sds, out, (pair_points, pair_pixels, sizes)


def _devkit(nusc, lidar_token, camera_token):
    """Devkit projection: (n,2) uv and (n,) depth of the kept points, in point-index order."""
    pts, depth, _im = nusc.explorer.map_pointcloud_to_image(lidar_token, camera_token)
    return pts[:2].T.astype(np.float64), np.asarray(depth, np.float64)


def _devkit_kept_indices(ours, devkit):
    """Recover which points the devkit kept: walk our candidates (points we keep, plus boundary
    cases) in index order alongside the devkit's output, which is also in index order. A candidate
    that we keep and the devkit skipped is allowed only if it is a boundary case.

    Returns (indices (n,) int64, None), or (None, description of the first disagreement).
    """
    duv, ddepth = devkit
    candidates = np.union1d(ours["idx"], np.nonzero(ours["ambiguous"])[0])
    kept, j = [], 0
    for i in candidates:
        if j < len(duv) and np.abs(ours["all_uv"][i] - duv[j]).max() <= UV_TOL \
                and abs(ours["all_depth"][i] - ddepth[j]) <= DEPTH_TOL:
            kept.append(i)
            j += 1
        elif not ours["ambiguous"][i]:
            where = f"devkit point {j} at {duv[j]}" if j < len(duv) else "the devkit has no more points"
            return None, (f"point {i} projects to {ours['all_uv'][i]} (depth {ours['all_depth'][i]:.3f} m), "
                          f"{where}")
    if j != len(duv):
        return None, f"{len(duv) - j} devkit points (from {duv[j]}) match none of our candidates"
    return np.asarray(kept, np.int64), None


def _mismatch(ours, devkit):
    """None when our kept points and pixels match the devkit's (up to boundary cases), else why not."""
    dev_idx, problem = _devkit_kept_indices(ours, devkit)
    if problem:
        return problem
    differ = np.setxor1d(ours["idx"], dev_idx)
    if (~ours["ambiguous"][differ]).any():
        return f"points {differ[~ours['ambiguous'][differ]]} kept by one side only"
    common, a, b = np.intersect1d(ours["idx"], dev_idx, return_indices=True)
    if len(common):
        err = np.abs(ours["uv"][a] - devkit[0][b]).max()
        if err > UV_TOL:
            return f"pixels differ by up to {err:.2f} px"
    return None


def test_pairs_match_devkit_every_camera(keyframes):
    nusc = keyframes.nusc
    tokens = keyframes.sample_tokens[:4]
    assert len(tokens) >= 3, "the fixture should provide several keyframes"
    total = boundary_differences = 0
    for sample_token in tokens:
        lidar_sd, camera_sds, ours, (pair_points, pair_pixels, sizes) = _ours_per_camera(keyframes, sample_token)
        for c, cam_sd in enumerate(camera_sds):
            dev = _devkit(nusc, lidar_sd["token"], cam_sd["token"])
            problem = _mismatch(ours[c], dev)
            assert problem is None, f"sample {sample_token} {cam_sd['channel']}: {problem}"
            boundary_differences += abs(len(ours[c]["idx"]) - len(dev[0]))
            assert np.all(np.diff(ours[c]["idx"]) > 0), "pairs of one camera should be in point-index order"
            total += len(dev[0])
        # the rounded pixel always lies inside its image
        w, h = sizes[pair_pixels[:, 0], 0], sizes[pair_pixels[:, 0], 1]
        assert (pair_pixels[:, 1] >= 0).all() and (pair_pixels[:, 1] < h).all()
        assert (pair_pixels[:, 2] >= 0).all() and (pair_pixels[:, 2] < w).all()
    assert total > 10_000, f"only {total} pairs over {len(tokens)} keyframes: the comparison is too weak"
    # float32 rounding in the devkit may flip a handful of boundary points, no more
    assert boundary_differences <= 1e-3 * total, f"{boundary_differences} of {total} pairs differ at boundaries"


def test_keyframe_pairs_are_those_of_projection(keyframes):
    """``NuScenesKeyframes.__getitem__`` returns exactly the (devkit-checked) projection pairs."""
    kf = keyframes[0]
    _, _, _, (pair_points, pair_pixels, _) = _ours_per_camera(keyframes, keyframes.sample_tokens[0])
    np.testing.assert_array_equal(kf.pair_points, pair_points)
    np.testing.assert_array_equal(kf.pair_pixels, pair_pixels)


def test_ignoring_camera_ego_pose_is_caught(keyframes):
    """Using the LiDAR's ego pose for the camera (a classic bug) moves pixels by > 1 px and fails the
    devkit comparison above, i.e. that test would catch it."""
    nusc = keyframes.nusc
    sample_token = keyframes.sample_tokens[0]
    lidar_sd = keyframes.lidar_record(sample_token)
    camera_sds = keyframes.camera_records(sample_token)

    def pose(table, token):
        rec = nusc.get(table, token)
        return pose_matrix(rec["rotation"], rec["translation"])

    ego_from_lidar = pose("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    global_from_ego_l = pose("ego_pose", lidar_sd["ego_pose_token"])
    wrong = []
    for sd in camera_sds:
        assert sd["ego_pose_token"] != lidar_sd["ego_pose_token"]
        ego_from_cam = pose("calibrated_sensor", sd["calibrated_sensor_token"])
        # global_from_ego_c replaced by the LiDAR's global_from_ego_l
        wrong.append(np.linalg.inv(ego_from_cam) @ np.linalg.inv(global_from_ego_l) @ global_from_ego_l
                     @ ego_from_lidar)
    wrong = np.stack(wrong)
    _, _, right_out, _ = _ours_per_camera(keyframes, sample_token)
    _, _, wrong_out, _ = _ours_per_camera(keyframes, sample_token, transforms=wrong)

    max_shift = 0.0
    caught = 0
    for c, sd in enumerate(camera_sds):
        ri, ruv, wi, wuv = right_out[c]["idx"], right_out[c]["uv"], wrong_out[c]["idx"], wrong_out[c]["uv"]
        common, r_pos, w_pos = np.intersect1d(ri, wi, return_indices=True)
        if len(common):
            max_shift = max(max_shift, float(np.abs(ruv[r_pos] - wuv[w_pos]).max()))
        if _mismatch(wrong_out[c], _devkit(nusc, lidar_sd["token"], sd["token"])) is not None:
            caught += 1
    assert max_shift > 1.0, f"the wrong ego pose shifts pixels by only {max_shift:.2f} px"
    assert caught == len(camera_sds), f"the devkit comparison catches the bug in only {caught} cameras"


# ---------------------------------------------------------------------------------------------
# Closed form on hand-built cameras
# ---------------------------------------------------------------------------------------------

FX, FY, CX, CY = 128.0, 96.0, 50.0, 40.0
W, H = 100, 80


def _camera(fx=FX, fy=FY, cx=CX, cy=CY):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def test_closed_form_identity_pose():
    rng = np.random.default_rng(0)
    z = rng.uniform(2, 50, 400)
    u_true, v_true = rng.uniform(1.5, W - 1.5, 400), rng.uniform(1.5, H - 1.5, 400)
    pts = np.stack([(u_true - CX) * z / FX, (v_true - CY) * z / FY, z], 1)
    T = np.eye(4)[None]
    idx, pix, uv = project_points_to_cameras(pts, T, _camera()[None], np.array([[W, H]]))
    np.testing.assert_array_equal(idx, np.arange(400))
    x, y = pts[:, 0], pts[:, 1]
    # projection runs in float32 (as the devkit's): 1e-4 px is far below a pixel
    np.testing.assert_allclose(uv[:, 0], FX * x / z + CX, atol=1e-4)
    np.testing.assert_allclose(uv[:, 1], FY * y / z + CY, atol=1e-4)
    np.testing.assert_array_equal(pix[:, 0], 0)
    assert np.abs(pix[:, 1] - (FY * y / z + CY)).max() <= 0.5 + 1e-4  # row = rounded v
    assert np.abs(pix[:, 2] - (FX * x / z + CX)).max() <= 0.5 + 1e-4  # column = rounded u
    assert idx.dtype == np.int64 and pix.dtype == np.int64 and pix.shape == (400, 3) and uv.shape == (400, 2)


def test_closed_form_two_cameras_and_translation():
    """Camera 1 sits 2 m to the right (x) of camera 0 and has its own K and size; a point seen by both
    gives two pairs, camera 0 first."""
    K0, K1 = _camera(), _camera(fx=200.0, fy=200.0, cx=60.0, cy=30.0)
    T1 = np.eye(4)
    T1[0, 3] = -2.0  # camera_from_lidar: x_cam = x_lidar - 2
    pts = np.array([[1.0, 0.5, 10.0], [2.0, -0.3, 8.0]])
    idx, pix, uv = project_points_to_cameras(pts, np.stack([np.eye(4), T1]), np.stack([K0, K1]),
                                             np.array([[W, H], [120, 70]]))
    expect = []
    for c, (K, dx) in enumerate(((K0, 0.0), (K1, -2.0))):
        for i, (x, y, z) in enumerate(pts):
            expect.append((c, i, K[0, 0] * (x + dx) / z + K[0, 2], K[1, 1] * y / z + K[1, 2]))
    assert [tuple(p) for p in np.stack([pix[:, 0], idx], 1)] == [(c, i) for c, i, _, _ in expect]
    np.testing.assert_allclose(uv, [(u, v) for _, _, u, v in expect], atol=1e-9)


def test_min_depth_rule():
    """Keep depth > min_depth (strict); points behind the camera never project, even when their
    perspective division lands inside the image."""
    pts = np.array([
        [0.0, 0.0, 0.5],    # 0.5 m: too close
        [0.0, 0.0, 1.0],    # exactly min_depth: dropped (strict)
        [0.0, 0.0, 1.001],  # kept
        [0.0, 0.0, 30.0],   # kept
        [0.1, 0.1, -5.0],   # behind: u, v inside the image after division, dropped
    ])
    idx, _, _ = project_points_to_cameras(pts, np.eye(4)[None], _camera()[None], np.array([[W, H]]))
    np.testing.assert_array_equal(idx, [2, 3])
    idx, _, _ = project_points_to_cameras(pts, np.eye(4)[None], _camera()[None], np.array([[W, H]]), min_depth=0.25)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])


def test_margin_rule():
    """Keep margin < u < W - margin and margin < v < H - margin (strict), in pixels.

    With fx = 128, cx = 50, z = 8: u = 16 x + 50, exact in binary floating point."""
    z = 8.0
    us = np.array([1.0, 1.0625, W - 1.0625, W - 1.0, 0.5, W - 0.5])
    pts = np.stack([(us - CX) * z / FX, np.zeros_like(us), np.full_like(us, z)], 1)
    K, size = _camera()[None], np.array([[W, H]])
    idx, _, uv = project_points_to_cameras(pts, np.eye(4)[None], K, size)
    np.testing.assert_array_equal(uv[:, 0], us[idx])
    np.testing.assert_array_equal(idx, [1, 2])
    idx, _, _ = project_points_to_cameras(pts, np.eye(4)[None], K, size, margin=0.0)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4, 5])
    # rows: v = 12 y + 40
    vs = np.array([1.0, 1.0625, H - 1.0625, H - 1.0])
    pts = np.stack([np.zeros_like(vs), (vs - CY) * z / FY, np.full_like(vs, z)], 1)
    idx, pix, _ = project_points_to_cameras(pts, np.eye(4)[None], K, size)
    np.testing.assert_array_equal(idx, [1, 2])
    np.testing.assert_array_equal(pix[:, 1], [1, H - 1])


def test_empty_input():
    idx, pix, uv = project_points_to_cameras(np.zeros((0, 3)), np.eye(4)[None], _camera()[None], np.array([[W, H]]))
    assert idx.shape == (0,) and pix.shape == (0, 3) and uv.shape == (0, 2)


@pytest.mark.parametrize("n_cameras", [1, 6])
def test_batched_equals_per_camera(n_cameras):
    """Projecting C cameras at once equals projecting each camera alone (then concatenated)."""
    rng = np.random.default_rng(n_cameras)
    pts = rng.normal(0, 10, (500, 3))
    T = np.stack([pose_matrix([np.cos(a / 2), 0, np.sin(a / 2), 0], rng.normal(0, 1, 3))
                  for a in rng.uniform(-np.pi, np.pi, n_cameras)])
    K = np.stack([_camera(fx=f, fy=f) for f in rng.uniform(40, 120, n_cameras)])
    sizes = np.tile([[W, H]], (n_cameras, 1))
    idx, pix, uv = project_points_to_cameras(pts, T, K, sizes)
    for c in range(n_cameras):
        i1, p1, uv1 = project_points_to_cameras(pts, T[c:c + 1], K[c:c + 1], sizes[c:c + 1])
        sel = pix[:, 0] == c
        np.testing.assert_array_equal(idx[sel], i1)
        np.testing.assert_array_equal(pix[sel, 1:], p1[:, 1:])
        np.testing.assert_allclose(uv[sel], uv1)
    assert len(idx) > 0


def test_quaternion_to_matrix_matches_pyquaternion():
    from pyquaternion import Quaternion

    from cmcr_lite.data.projection import invert_pose, pose_matrix, quaternion_to_matrix

    rng = np.random.default_rng(0)
    for _ in range(20):
        q = Quaternion(rng.normal(size=4)).normalised
        assert np.allclose(quaternion_to_matrix(q.elements), q.rotation_matrix, atol=1e-12)
        T = pose_matrix(q.elements, rng.normal(size=3))
        assert np.allclose(invert_pose(T), np.linalg.inv(T), atol=1e-12)
