"""KAGI keypoint reward: a VLM plans keypoints and waypoints once, a distance measures progress.

At the first frame of an episode the camera image gets numbered marks (:mod:`.marks`); a VLM
names the affordance keypoint mark(s) and an ordered waypoint sequence of marks
(:func:`.prompts.keypoint_prompt`). The marks are lifted to 3D with the aligned depth image and
the camera calibration. From then on the reward needs no VLM: with K waypoints, the tracked
point (the end effector or the object, per stage) at distance d_k from the active waypoint k,
and d_k0 that distance when stage k began,

    dense = (k + 1 - clip(d_k / d_k0, 0, 1)) / (K + 1)   in [0, K / (K + 1)] within [0, 1)

and stage k ends (k + 1 starts) when d_k < ``reach_radius``; the stage index never goes back.
As in KAGI the reward is the sparse success reward when that is non-zero, else the dense one,
so the dense shaping always stays below success.

Waypoints in the air: a mark can only show a pixel, and the depth there belongs to whatever
surface the pixel sees. Each waypoint is lifted one of two ways (``waypoint_lift``, per stage):

* ``"depth"``: the mark shows the surface point under (or at) the waypoint -- a spot on the
  table behind a cube, the goal disc, the top of a rod -- lifted with its depth, then raised by
  ``z_offsets[k]`` (an approach height, or the object's half height for an object waypoint);
* ``"plane"``: the mark shows the waypoint itself, at the height of the first keypoint (plus
  ``z_offsets[k]``): its camera ray is cut with that horizontal plane. This is the choice for
  objects moved sideways at their own height, like a drawer handle pulled out, where the pixel
  of the goal position sees the table far behind it.

Like MOKA's "same height / above" waypoints, the plane and offsets are configuration, not
something the VLM has to state in metres. :data:`TWIN_PRESETS` holds the settings for the twin's
tasks (the simulated teacher chooses its marks by the same conventions).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from .base import RewardBatch, RewardOutput
from .errors import RewardError
from .marks import Mark, MarkConfig, mark_image

__all__ = [
    "FRAME_NOTE",
    "TWIN_PRESETS",
    "KeypointConfig",
    "KeypointPlan",
    "KeypointReward",
    "StageState",
    "camera_matrix",
    "lift_pixels",
    "plan_from_vlm",
    "progress_reward",
    "project_points",
    "ray_plane",
    "twin_keypoint_config",
]

log = logging.getLogger(__name__)

LIFT_MODES = ("depth", "plane")
TRACKED = ("ee", "object")
# Put before the keypoint prompt: the model sees the plain frame, then the marked copy.
FRAME_NOTE = (
    "Two images follow: first the plain camera view, then the same view with numbered marks "
    "drawn on it (the marked image the text below describes).\n"
)


class AsksVLM(Protocol):
    """What planning needs of a VLM client (:class:`.vlm_client.VLMClient` fits)."""

    def ask(self, prompt: str, images: Sequence[np.ndarray] = (), **kwargs: Any) -> str: ...


# ----- camera geometry -------------------------------------------------------------------------
def camera_matrix(intrinsics: Any) -> tuple[float, float, float, float, int, int]:
    """(fx, fy, ppx, ppy, width, height) from a dict (store attrs, CameraInfo-like), an object
    with those attributes (``CameraIntrinsics``) or a 6-sequence in that order."""
    names = ("fx", "fy", "ppx", "ppy", "width", "height")
    if isinstance(intrinsics, Mapping):
        missing = [n for n in names if n not in intrinsics]
        if missing:
            msg = f"camera intrinsics lack {missing} (have {sorted(intrinsics)})"
            raise RewardError(msg)
        values = [intrinsics[n] for n in names]
    elif all(hasattr(intrinsics, n) for n in names):
        values = [getattr(intrinsics, n) for n in names]
    elif isinstance(intrinsics, Sequence | np.ndarray) and len(intrinsics) == 6:
        values = list(intrinsics)
    else:
        msg = f"cannot read camera intrinsics (fx, fy, ppx, ppy, width, height) from {intrinsics!r}"
        raise RewardError(msg)
    fx, fy, ppx, ppy = (float(v) for v in values[:4])
    width, height = int(values[4]), int(values[5])
    if not (fx > 0 and fy > 0 and width > 0 and height > 0):
        msg = f"camera intrinsics must have positive fx, fy, width, height, got {values}"
        raise RewardError(msg)
    return fx, fy, ppx, ppy, width, height


def _floats(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        msg = f"{what} must be numbers: {err}"
        raise RewardError(msg) from err


def _pose(camera_to_world: Any) -> np.ndarray:
    pose = _floats(camera_to_world, "camera_to_world")
    if pose.shape == (16,):
        pose = pose.reshape(4, 4)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        msg = f"camera_to_world must be a finite 4x4 matrix, got shape {pose.shape}"
        raise RewardError(msg)
    rot = pose[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3):
        msg = "camera_to_world rotation is not orthonormal"
        raise RewardError(msg)
    return pose


def _uv(uv: Any) -> np.ndarray:
    arr = _floats(uv, "pixels")
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        msg = f"pixels must be a finite (N, 2) array of (u, v), got shape {arr.shape}"
        raise RewardError(msg)
    return arr


def lift_pixels(
    uv: Any, depth_mm: np.ndarray, intrinsics: Any, camera_to_world: Any, *, window: int = 2
) -> np.ndarray:
    """World points (N, 3) of pixels ``uv`` (N, 2) seen with aligned depth in millimetres.

    The depth of a pixel is the median of the non-zero depths in the (2 * window + 1)^2 window
    around it (robust to edge pixels and speckle); 0 means no return, and a window without any
    return is a RewardError naming the pixel. The ray goes through the sub-pixel ``uv``.
    """
    fx, fy, ppx, ppy, width, height = camera_matrix(intrinsics)
    pose = _pose(camera_to_world)
    pixels = _uv(uv)
    depth = np.asarray(depth_mm)
    if depth.shape != (height, width):
        msg = f"depth image {depth.shape} does not match the intrinsics ({height}, {width})"
        raise RewardError(msg)
    if window < 0:
        msg = f"window must be >= 0, got {window}"
        raise RewardError(msg)
    z = np.empty(len(pixels))
    for i, (u, v) in enumerate(pixels):
        col, row = round(u), round(v)
        if not (0 <= col < width and 0 <= row < height):
            msg = f"pixel (u={u:.1f}, v={v:.1f}) is outside the {width}x{height} image"
            raise RewardError(msg)
        patch = depth[
            max(0, row - window) : row + window + 1, max(0, col - window) : col + window + 1
        ]
        valid = patch[patch > 0]
        if valid.size == 0:
            msg = (
                f"no depth return at pixel (u={u:.1f}, v={v:.1f}) or within {window} px of it; "
                "cannot lift it to 3D"
            )
            raise RewardError(msg)
        z[i] = float(np.median(valid)) / 1000.0
    cam = np.stack([(pixels[:, 0] - ppx) * z / fx, (pixels[:, 1] - ppy) * z / fy, z], axis=1)
    world: np.ndarray = cam @ pose[:3, :3].T + pose[:3, 3]
    return world


def project_points(points: Any, intrinsics: Any, camera_to_world: Any) -> np.ndarray:
    """Pixels (N, 2) of world points (N, 3); RewardError for a point behind the camera."""
    fx, fy, ppx, ppy, _, _ = camera_matrix(intrinsics)
    pose = _pose(camera_to_world)
    pts = _floats(points, "points")
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.isfinite(pts).all():
        msg = f"points must be a finite (N, 3) array, got shape {pts.shape}"
        raise RewardError(msg)
    cam = (pts - pose[:3, 3]) @ pose[:3, :3]  # R^T (p - t), row-wise
    behind = np.nonzero(cam[:, 2] <= 1e-6)[0]
    if behind.size:
        msg = f"points {behind.tolist()} are behind the camera; they have no pixel"
        raise RewardError(msg)
    uv: np.ndarray = np.stack(
        [fx * cam[:, 0] / cam[:, 2] + ppx, fy * cam[:, 1] / cam[:, 2] + ppy], axis=1
    )
    return uv


def ray_plane(uv: Any, intrinsics: Any, camera_to_world: Any, height: float) -> np.ndarray:
    """World points (N, 3) where the camera rays of pixels ``uv`` cut the plane z = ``height``."""
    fx, fy, ppx, ppy, _, _ = camera_matrix(intrinsics)
    pose = _pose(camera_to_world)
    pixels = _uv(uv)
    rays = np.stack(
        [(pixels[:, 0] - ppx) / fx, (pixels[:, 1] - ppy) / fy, np.ones(len(pixels))], axis=1
    )
    dirs = rays @ pose[:3, :3].T
    origin = pose[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (height - origin[2]) / dirs[:, 2]
    bad = np.nonzero(~np.isfinite(t) | (t <= 0))[0]
    if bad.size:
        msg = f"the rays of pixels {pixels[bad].tolist()} do not reach the plane z = {height:.3f} m"
        raise RewardError(msg)
    out: np.ndarray = origin + t[:, None] * dirs
    return out


# ----- configuration ---------------------------------------------------------------------------
def _per_stage(values: tuple[Any, ...], k: int) -> Any:
    """Entry ``k`` of a per-stage tuple; the last entry repeats for later stages."""
    return values[min(k, len(values) - 1)]


@dataclass(frozen=True)
class KeypointConfig:
    type: ClassVar[str] = "keypoints"

    n_keypoints: int = 1  # affordance keypoint marks the VLM must pick
    max_waypoints: int = 3  # longest waypoint sequence the VLM may give (longer is cut)
    grid_spacing: int = 64  # px between grid marks in the (upscaled) marked image; 0: none
    object_marks: bool = True  # add object-centred marks (regions, thin structures)
    reach_radius: float = 0.03  # m; waypoint k is reached when d_k < this
    tracked: tuple[str, ...] = ("ee",)  # per stage "ee" or "object"; the last entry repeats
    object_key: str = ""  # state key of the object position (priv_cube_pos; a tracked point)
    ee_key: str = "ee_pose"  # state key of the end-effector pose (xyz first)
    depth_key: str = "depth"  # state key of the aligned depth (mm) the plan is lifted with
    sparse_key: str = "success"  # state key of the sparse success reward; "" for dense only
    waypoint_lift: tuple[str, ...] = ("depth",)  # per waypoint "depth" or "plane" (module doc)
    z_offsets: tuple[float, ...] = (0.0,)  # m added to each waypoint's height; last repeats
    lift_window: int = 2  # px; depth is the median of valid depths in this window radius
    task: str = ""  # task sentence for the VLM; "" uses the batch's task
    intrinsics: tuple[float, ...] = ()  # (fx, fy, ppx, ppy, width, height); or set_camera()
    camera_to_world: tuple[float, ...] = ()  # 16 values, row-major 4x4; or set_camera()
    replan_each_episode: bool = True  # with a client: plan anew from each episode's first frame

    def __post_init__(self) -> None:
        if self.n_keypoints < 1 or self.max_waypoints < 1:
            msg = f"n_keypoints and max_waypoints must be >= 1, got {self.n_keypoints}, {self.max_waypoints}"
            raise RewardError(msg)
        if not self.reach_radius > 0:
            msg = f"reach_radius must be > 0 m, got {self.reach_radius}"
            raise RewardError(msg)
        MarkConfig(grid_spacing=self.grid_spacing, object_marks=self.object_marks)  # validates
        for name, values, allowed in (
            ("tracked", self.tracked, TRACKED),
            ("waypoint_lift", self.waypoint_lift, LIFT_MODES),
        ):
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                msg = f"{name} entries must be in {list(allowed)}, got {list(values)}"
                raise RewardError(msg)
        if "object" in self.tracked and not self.object_key:
            msg = "tracked uses 'object' but object_key is empty (e.g. 'priv_cube_pos')"
            raise RewardError(msg)
        if not self.z_offsets or not all(np.isfinite(self.z_offsets)):
            msg = f"z_offsets must be one or more finite heights in m, got {self.z_offsets}"
            raise RewardError(msg)
        if self.lift_window < 0:
            msg = f"lift_window must be >= 0 px, got {self.lift_window}"
            raise RewardError(msg)
        if self.intrinsics:
            camera_matrix(self.intrinsics)
        if self.camera_to_world:
            _pose(self.camera_to_world)

    def mark_config(self) -> MarkConfig:
        return MarkConfig(grid_spacing=self.grid_spacing, object_marks=self.object_marks)


# Settings for the twin's tasks, matched by the simulated teacher's conventions
# (keypoint_teacher.py): which point is tracked in each stage and how waypoints are lifted.
TWIN_PRESETS: dict[str, dict[str, Any]] = {
    # waypoints: table spot behind the cube (approach just above the table), then the goal disc
    # raised by the cube's half height (the cube centre ends there).
    "push_cube": {
        "tracked": ("ee", "object"),
        "object_key": "priv_cube_pos",
        "waypoint_lift": ("depth",),
        "z_offsets": (0.03, 0.025),
        "reach_radius": 0.03,
        "max_waypoints": 2,
    },
    # waypoints: the handle, then the handle pulled out, both at the handle's height. The hand
    # hooks in between bar and drawer face, a few cm from the bar: a wider reach radius.
    "open_drawer": {
        "tracked": ("ee", "object"),
        "object_key": "priv_handle_pos",
        "waypoint_lift": ("plane",),
        "z_offsets": (0.0,),
        "reach_radius": 0.05,
        "max_waypoints": 2,
    },
    # waypoints: the rod's top above its centre of mass, then the same spot lifted 9 cm (the
    # hand grasps a little below the top: a wider reach radius).
    "lift_rod": {
        "tracked": ("ee", "object"),
        "object_key": "priv_rod_com",
        "waypoint_lift": ("depth",),
        "z_offsets": (0.0, 0.09),
        "reach_radius": 0.04,
        "max_waypoints": 2,
    },
}


def twin_keypoint_config(task: str, **overrides: Any) -> KeypointConfig:
    """The :data:`TWIN_PRESETS` config of a twin task, with ``overrides`` applied."""
    if task not in TWIN_PRESETS:
        msg = f"no keypoint preset for task {task!r}. Available: {sorted(TWIN_PRESETS)}"
        raise RewardError(msg)
    return KeypointConfig(**{**TWIN_PRESETS[task], **overrides})


# ----- plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeypointPlan:
    """Keypoints and waypoints in world coordinates, with where they came from."""

    keypoints: np.ndarray  # (n, 3) world points, m
    waypoints: np.ndarray  # (K, 3) world points, m, in order
    keypoint_marks: tuple[int, ...] = ()  # mark numbers the VLM chose
    waypoint_marks: tuple[int, ...] = ()
    reply: str = ""  # the VLM's raw answer
    marks: tuple[Mark, ...] = ()  # all marks that were offered
    marked_image: np.ndarray | None = field(default=None, repr=False)  # what the VLM saw

    def __post_init__(self) -> None:
        for name in ("keypoints", "waypoints"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0 or not np.isfinite(arr).all():
                msg = f"plan {name} must be a finite non-empty (N, 3) array, got shape {arr.shape}"
                raise RewardError(msg)
            object.__setattr__(self, name, arr)

    @property
    def n_waypoints(self) -> int:
        return len(self.waypoints)


def _lift_waypoints(
    uv: np.ndarray,
    keypoints: np.ndarray,
    depth: np.ndarray,
    intrinsics: Any,
    camera_to_world: Any,
    config: KeypointConfig,
) -> np.ndarray:
    out = np.empty((len(uv), 3))
    for k in range(len(uv)):
        offset = float(_per_stage(config.z_offsets, k))
        if _per_stage(config.waypoint_lift, k) == "plane":
            height = float(keypoints[0, 2]) + offset
            out[k] = ray_plane(uv[k : k + 1], intrinsics, camera_to_world, height)[0]
        else:
            out[k] = lift_pixels(
                uv[k : k + 1], depth, intrinsics, camera_to_world, window=config.lift_window
            )[0]
            out[k, 2] += offset
    return out


def plan_from_vlm(
    client: AsksVLM,
    frame: np.ndarray,
    depth: np.ndarray,
    intrinsics: Any,
    camera_to_world: Any,
    task_text: str,
    config: KeypointConfig,
) -> KeypointPlan:
    """Mark ``frame``, ask the VLM for keypoint and waypoint marks, lift them to 3D.

    The VLM gets the plain frame and the marked copy (in that order) and the keypoint prompt
    listing every mark's pixel position. Extra keypoints or waypoints beyond the config's counts
    are dropped (logged); a reply without any, or with unknown marks, is a RewardError.
    """
    from .prompts import keypoint_prompt, parse_keypoint_reply

    marked = mark_image(frame, depth, config.mark_config())
    prompt = FRAME_NOTE + keypoint_prompt(
        task_text, marked.drawn(), config.n_keypoints, config.max_waypoints
    )
    reply = client.ask(prompt, [frame, marked.image])
    answer = parse_keypoint_reply(reply, [m.number for m in marked.marks])
    keys, ways = answer.keypoints, answer.waypoints
    if len(keys) > config.n_keypoints or len(ways) > config.max_waypoints:
        log.warning(
            "VLM gave %d keypoints / %d waypoints; keeping %d / %d",
            len(keys),
            len(ways),
            config.n_keypoints,
            config.max_waypoints,
        )
        keys, ways = keys[: config.n_keypoints], ways[: config.max_waypoints]
    by_number = {m.number: (m.u, m.v) for m in marked.marks}
    key_uv = np.array([by_number[n] for n in keys], dtype=float)
    way_uv = np.array([by_number[n] for n in ways], dtype=float)
    keypoints = lift_pixels(key_uv, depth, intrinsics, camera_to_world, window=config.lift_window)
    waypoints = _lift_waypoints(way_uv, keypoints, depth, intrinsics, camera_to_world, config)
    log.info("keypoint plan: keypoints %s, waypoints %s", list(keys), list(ways))
    return KeypointPlan(
        keypoints=keypoints,
        waypoints=waypoints,
        keypoint_marks=tuple(keys),
        waypoint_marks=tuple(ways),
        reply=reply,
        marks=marked.marks,
        marked_image=marked.image,
    )


# ----- progress --------------------------------------------------------------------------------
@dataclass
class StageState:
    """Where one episode is in its waypoint sequence (mutated by :func:`progress_reward`)."""

    stage: int = 0  # index of the active waypoint; == K once all are reached
    start_distance: float | None = None  # d_k0: distance when the active stage began


def progress_reward(
    points: np.ndarray, plan: KeypointPlan, stage_state: StageState, *, reach_radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense KAGI progress of consecutive rows of one episode; advances ``stage_state``.

    ``points``: (B, 3) tracked point per row, or (B, K, 3) with the point tracked in each stage
    (the end effector for reaching, the object for moving it). Returns (progress (B,) float32 in
    [0, K / (K + 1)], stage (B,) int, distance (B,) float32 to the active waypoint; 0 after the
    last one). Several stages can end in one row when the next waypoint is already in reach.
    """
    pts = np.asarray(points, dtype=float)
    k_total = plan.n_waypoints
    if pts.ndim == 2 and pts.shape[1] == 3:
        pts = np.repeat(pts[:, None, :], k_total, axis=1)
    if pts.ndim != 3 or pts.shape[1:] != (k_total, 3) or not np.isfinite(pts).all():
        msg = f"points must be finite (B, 3) or (B, {k_total}, 3), got shape {np.shape(points)}"
        raise RewardError(msg)
    if stage_state.stage < 0 or stage_state.stage > k_total:
        msg = f"stage {stage_state.stage} is outside 0..{k_total}"
        raise RewardError(msg)
    progress = np.empty(len(pts), dtype=np.float32)
    stages = np.empty(len(pts), dtype=np.int64)
    dists = np.zeros(len(pts), dtype=np.float32)
    for i, row in enumerate(pts):
        ratio = 0.0
        while stage_state.stage < k_total:
            k = stage_state.stage
            d = float(np.linalg.norm(row[k] - plan.waypoints[k]))
            if stage_state.start_distance is None:
                stage_state.start_distance = d
            if d < reach_radius:
                stage_state.stage += 1
                stage_state.start_distance = None
                continue
            ratio = min(1.0, d / stage_state.start_distance)
            dists[i] = d
            break
        k = stage_state.stage
        progress[i] = (k + 1 - ratio) / (k_total + 1) if k < k_total else k_total / (k_total + 1)
        stages[i] = k
    return progress, stages, dists


# ----- reward model ----------------------------------------------------------------------------
class KeypointReward:
    """KAGI reward: plans from an episode's first frame, then measures waypoint progress.

    Rows of a batch must be consecutive frames of one episode (the stage state runs through
    them in order); call :meth:`reset` between episodes. Needs ``state[ee_key]`` (and
    ``state[object_key]`` for object stages); planning also needs ``state[depth_key]`` and the
    camera (config or :meth:`set_camera`). Success is the sparse reward when the batch carries
    ``sparse_key``, else "all waypoints reached".
    """

    def __init__(
        self,
        config: KeypointConfig | None = None,
        client: AsksVLM | None = None,
        plan: KeypointPlan | None = None,
    ) -> None:
        self.config = config or KeypointConfig()
        self.client = client
        self.plan = plan
        self.stage_state = StageState()
        self._intrinsics: Any = self.config.intrinsics or None
        self._pose: Any = self.config.camera_to_world or None
        self._warned_sparse = False

    def set_camera(self, intrinsics: Any, camera_to_world: Any) -> None:
        """Camera intrinsics (dict/object/6-tuple) and camera-to-world 4x4 (OpenCV axes)."""
        camera_matrix(intrinsics)
        _pose(camera_to_world)
        self._intrinsics, self._pose = intrinsics, camera_to_world

    def reset(self) -> None:
        """Start a new episode: stage 0 again, and a new plan at the next frame if a client can
        make one (``replan_each_episode``)."""
        self.stage_state = StageState()
        if self.client is not None and self.config.replan_each_episode:
            self.plan = None

    def _make_plan(self, batch: RewardBatch) -> KeypointPlan:
        cfg = self.config
        if self.client is None:
            msg = "KeypointReward has no plan and no VLM client to make one"
            raise RewardError(msg)
        if self._intrinsics is None or self._pose is None:
            msg = "planning needs the camera: set config intrinsics/camera_to_world or call set_camera()"
            raise RewardError(msg)
        if cfg.depth_key not in batch.state:
            msg = f"planning needs aligned depth in state[{cfg.depth_key!r}]; the batch has {sorted(batch.state)}"
            raise RewardError(msg)
        task = cfg.task or batch.task
        depth = np.asarray(batch.state[cfg.depth_key][0])
        return plan_from_vlm(
            self.client, batch.frames[0], depth, self._intrinsics, self._pose, task, cfg
        )

    def _state(self, batch: RewardBatch, key: str) -> np.ndarray:
        if key not in batch.state:
            msg = f"keypoint reward needs state[{key!r}]; the batch has {sorted(batch.state)}"
            raise RewardError(msg)
        arr = np.asarray(batch.state[key], dtype=float).reshape(len(batch), -1)
        if arr.shape[1] < 3:
            msg = f"state[{key!r}] must hold a position (x, y, z first), got shape {arr.shape}"
            raise RewardError(msg)
        return arr[:, :3]

    def _tracked_points(self, batch: RewardBatch, k_total: int) -> np.ndarray:
        cfg = self.config
        sources = {"ee": lambda: self._state(batch, cfg.ee_key)}
        sources["object"] = lambda: self._state(batch, cfg.object_key)
        cache: dict[str, np.ndarray] = {}
        columns = []
        for k in range(k_total):
            name = _per_stage(cfg.tracked, k)
            if name not in cache:
                cache[name] = sources[name]()
            columns.append(cache[name])
        return np.stack(columns, axis=1)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        cfg = self.config
        if self.plan is None:
            self.plan = self._make_plan(batch)
        plan = self.plan
        points = self._tracked_points(batch, plan.n_waypoints)
        dense, stages, dists = progress_reward(
            points, plan, self.stage_state, reach_radius=cfg.reach_radius
        )
        sparse_on = bool(cfg.sparse_key) and cfg.sparse_key in batch.state
        if cfg.sparse_key and not sparse_on and not self._warned_sparse:
            log.warning("no state[%r] in the batch: dense reward only", cfg.sparse_key)
            self._warned_sparse = True
        if sparse_on:
            sparse = np.asarray(batch.state[cfg.sparse_key], dtype=np.float32).reshape(len(batch))
            rewards = np.where(sparse != 0, sparse, dense).astype(np.float32)
            success = sparse > 0
        else:
            rewards = dense
            success = stages >= plan.n_waypoints
        info = {"dense": dense, "stage": stages, "distance": dists, "sparse": sparse_on}
        return RewardOutput(rewards=rewards, success=success, info=info)

    def state_dict(self) -> dict[str, Any]:
        """The plan's arrays (empty before the first plan)."""
        if self.plan is None:
            return {}
        return {
            "keypoints": self.plan.keypoints.astype(np.float32),
            "waypoints": self.plan.waypoints.astype(np.float32),
            "keypoint_marks": np.asarray(self.plan.keypoint_marks, dtype=np.int64),
            "waypoint_marks": np.asarray(self.plan.waypoint_marks, dtype=np.int64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> KeypointReward:
        """Restore a plan saved by :meth:`state_dict` (an empty state clears the plan)."""
        if not state:
            self.plan = None
            return self
        missing = [k for k in ("keypoints", "waypoints") if k not in state]
        if missing:
            msg = f"keypoint state lacks {missing} (has {sorted(state)})"
            raise RewardError(msg)

        def arr(key: str) -> np.ndarray:
            value = state[key]
            return np.asarray(value.numpy() if hasattr(value, "numpy") else value)

        def marks(key: str) -> tuple[int, ...]:
            return tuple(int(v) for v in arr(key).reshape(-1)) if key in state else ()

        self.plan = KeypointPlan(
            arr("keypoints"),
            arr("waypoints"),
            keypoint_marks=marks("keypoint_marks"),
            waypoint_marks=marks("waypoint_marks"),
        )
        self.stage_state = StageState()
        return self
