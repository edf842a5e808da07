"""The ``evidence`` model: tbp.monty's graph memory and evidence matching, run from Python.

What lives here is orchestration; the arithmetic is in kernels:

- training (supervised): each training episode's observations go into the
  object's graph (``engine.models.evidence.graph_memory.GraphMemory``, ``kernels.graph``), in the
  object's canonical frame (the episode's known rotation undone);
- after training the nodes of all objects become one set of flat arrays, sorted
  per object into a grid for the nearest-node search
  (``kernels.evidence.build_node_grid``);
- each evaluation episode is one call of ``kernels.evidence.evidence_episode``
  (all steps, all objects, all hypotheses), or with ``execution.stepwise`` one
  ``evidence_step`` call per step; the hypothesis arrays are reused across
  episodes and grow when a burst needs more room.

Matching features: the dataset's feature columns (a column named ``hue`` is
circular with range 1) and the two log principal curvatures
``sign(k) log(1 + |k|)`` (tbp.monty's ``principal_curvatures_log``), in the
dataset's order ``|k1| >= |k2|``. ``kappa`` (section 4.5) is the larger absolute
log curvature.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels import evidence as kev

from engine.data.dataset import EVAL, TRAIN, EpisodeDataset
from engine.models.evidence.settings import EvidenceSettings
from engine.models.evidence.graph_memory import GraphMemory
from engine.data.rotations import quat_to_matrix
from engine.run.cpu_share import CpuShare
from engine.run.hooks import EVENTS, Hooks

log = logging.getLogger(__name__)

OUTCOMES = ("correct", "confused", "no_match", "time_out")
CURVATURE_FEATURES = ("curvature_log_1", "curvature_log_2")
_CODE_NAMES = {kev.MATCH: "match", kev.NO_MATCH: "no_match", kev.TIME_OUT: "time_out", kev.RUNNING: "time_out"}


@dataclass
class EvidenceEpisode:
    """One finished evaluation episode."""

    epoch: int
    episode: int              # index among the dataset's evaluation episodes
    object: str               # the object shown
    rotation: np.ndarray      # float32 (4,) its quaternion (w, x, y, z)
    outcome: str              # correct, confused, no_match, time_out
    detected: str | None      # the recognised object (match only)
    mlh_object: str | None    # object of the most likely hypothesis at the end
    mlh_correct: bool         # the most likely hypothesis names the right object
    steps: int                # matching steps taken
    rotation_error_deg: float | None  # correct episodes (and time-outs whose MLH is right)
    symmetric: bool           # matched by symmetry (many poses equally good)
    n_hypotheses: int         # live hypotheses at the end
    seconds: float            # wall time of the episode's kernel calls
    detected_rotation: np.ndarray | None = None  # float32 (3, 3) the object's rotation in the world, as detected
    trace: np.ndarray | None = field(default=None, repr=False)  # float32 (steps, O) best evidence per object
    jumps: int = 0                # hypothesis-testing jumps attempted (policy.hypothesis_testing)
    jumps_on_object: int = 0      # of those, the ones that landed on the object
    jump_steps: tuple = ()        # the steps (0-based, as the trace's rows) a jump landed on
    policy_seconds: float = 0.0   # of ``seconds``, moving the sensor and sensing (policy in the loop)
    # several modules (engine.models.evidence.modules): modules that matched the detected object,
    # each module's own outcome; trace is then (steps, modules, O)
    modules_matched: int | None = None
    module_outcomes: tuple | None = None


# Which setting fills which slot of the kernels' parameter arrays.
FPARAM_SETTINGS = {
    kev.FP_MMD: "max_match_distance", kev.FP_W_NORMAL: "normal_weight",
    kev.FP_W_CURV: "curvature_direction_weight", kev.FP_PAST: "past_weight", kev.FP_PRESENT: "present_weight",
    kev.FP_INCREMENT: "feature_evidence_increment", kev.FP_SAMPLING: "sampling_multiplier",
    kev.FP_DELETION_SLOPE: "deletion_trigger_slope", kev.FP_BURST_SLOPE: "burst_trigger_slope",
    kev.FP_X_PERCENT: "x_percent_threshold", kev.FP_OBJECT_THRESHOLD: "object_evidence_threshold",
    kev.FP_PATH_SIMILARITY: "path_similarity_threshold", kev.FP_POSE_SIMILARITY: "pose_similarity_threshold",
}
IPARAM_SETTINGS = {
    kev.IP_K: "max_nneighbors", kev.IP_UMBILICAL: "umbilical_num_poses",
    kev.IP_BURST_DURATION: "sampling_burst_duration", kev.IP_MIN_AGE: "min_age",
    kev.IP_MIN_STEPS: "min_eval_steps", kev.IP_SYMMETRY: "required_symmetry_evidence",
}


def matching_features(ds: EpisodeDataset) -> tuple[np.ndarray, tuple[str, ...]]:
    """The per-step matching features: the dataset's columns, then the two log curvatures.

    Returns float32 (T, F + 2) and the column names.
    """
    k = np.asarray(ds.curvature, np.float32)
    logk = (np.sign(k) * np.log1p(np.abs(k))).astype(np.float32)
    feats = np.concatenate([np.asarray(ds.features, np.float32), logk], axis=1)
    return np.ascontiguousarray(feats), tuple(str(n) for n in ds.feature_names) + CURVATURE_FEATURES


def _feature_spec(names: tuple[str, ...], s: EvidenceSettings) -> np.ndarray:
    """float32 (3, F): tolerance, weight, circular flag of each matching feature column."""
    spec = np.zeros((3, len(names)), np.float32)
    for c, name in enumerate(names):
        if name in CURVATURE_FEATURES:
            spec[:, c] = (s.curvature_tolerance, s.curvature_weight, 0)
        elif name == "hue":
            spec[:, c] = (s.hue_tolerance, s.hue_weight, 1)
        else:
            spec[:, c] = (s.feature_tolerance, s.feature_weight, 0)
    return spec


def curvature_defined(node_pfd: np.ndarray) -> np.ndarray:
    """float32 (N,) 0/1: the matcher's per-node weight of the curvature-direction evidence.

    A grid model's stored ``pose_fully_defined`` is a running (new + old) / 2 of majority
    votes (0.5, 0.25, ...); tbp.monty 0.55 reads it as a bool when it matches
    (``hypotheses_displacer._get_pose_evidence_matrix``: ``np.array(..., dtype=bool)``), so
    any non-zero value weights the curvature evidence fully, as here."""
    return (np.asarray(node_pfd) != 0).astype(np.float32)


def live_hypotheses(istate) -> int:
    """Live hypotheses after a step (rows in use minus deleted rows not yet compacted)."""
    return int(istate[kev.IS_N_HYP] - istate[kev.IS_N_DEAD])


def episode_steps(ds: EpisodeDataset, features: np.ndarray, e: int, max_steps: int | None = None) -> tuple:
    """Episode ``e``'s per-step arrays, as views: ``(location, pose_vectors, pose_defined, features)``.

    ``features`` is the dataset's matching features (``matching_features``); at most
    ``max_steps`` steps from the episode's start when given.
    """
    s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
    if max_steps is not None:
        s1 = min(s1, s0 + int(max_steps))
    return ds.location[s0:s1], ds.pose_vectors[s0:s1], ds.pose_defined[s0:s1], features[s0:s1]


def project_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation matrix nearest to ``m`` (..., 3, 3) (SVD, one per matrix), float64."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    flip = np.linalg.det(u @ vt) < 0
    u[..., :, -1] = np.where(flip[..., None], -u[..., :, -1], u[..., :, -1])
    return u @ vt


def rotation_angle_deg(a: np.ndarray, b: np.ndarray):
    """Geodesic angle between rotation matrices ``a`` (..., 3, 3) and ``b`` (3, 3), degrees
    (a float for one matrix, an array for a stack)."""
    a = np.asarray(a, np.float64)
    c = (np.einsum("...ij,ij->...", a, np.asarray(b, np.float64)) - 1.0) / 2.0
    angle = np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))
    return float(angle) if np.ndim(angle) == 0 else angle


class EvidenceModel:
    """Graph memory plus the hypothesis state of the evidence learning module.

    Parameters
    ----------
    settings : EvidenceSettings
    feature_names : the matching feature columns (``matching_features``)
    max_eval_steps : matching-step limit of an evaluation episode
    """

    def __init__(self, settings: EvidenceSettings, feature_names: tuple[str, ...], max_eval_steps: int = 500):
        self.settings = s = settings
        self.feature_names = feature_names
        self.feature_spec = _feature_spec(feature_names, s)
        circular = self.feature_spec[2] > 0
        thresholds = np.array([s.graph_hue_threshold if c else
                               (s.graph_curvature_threshold if n in CURVATURE_FEATURES else np.inf)
                               for n, c in zip(feature_names, circular)], np.float32)
        self.memory = GraphMemory(len(feature_names), circular, kind=s.graph, distance=s.graph_distance,
                                  normal_angle=s.graph_normal_angle, feat_thresholds=thresholds,
                                  max_size=s.max_graph_size, voxels_per_dim=s.voxels_per_dim,
                                  max_nodes=s.max_nodes)
        # kernel parameter arrays, filled from the settings by name
        self.fparams = np.zeros(kev.N_FPARAMS, np.float32)
        for index, name in FPARAM_SETTINGS.items():
            self.fparams[index] = getattr(s, name)
        self.iparams = np.zeros(kev.N_IPARAMS, np.int64)
        for index, name in IPARAM_SETTINGS.items():
            self.iparams[index] = getattr(s, name)
        self.iparams[kev.IP_UPDATER] = kev.UPDATER_BURST if s.updater == "burst" else kev.UPDATER_CLASSIC
        self.iparams[kev.IP_MAX_STEPS] = max_eval_steps
        self._model = None
        self._order = None  # model_arrays' node order (row i of the sorted arrays is memory row order[i])
        self._names = None  # set by from_arrays: a model not learned here
        self._hyp = None

    @classmethod
    def from_arrays(cls, settings: EvidenceSettings, feature_names: tuple[str, ...], models: kev.ObjectModels,
                    names: tuple[str, ...], max_eval_steps: int = 500) -> "EvidenceModel":
        """A model over object models built elsewhere (``kev.ObjectModels``, nodes already
        sorted into their search grid) for objects ``names``; it evaluates, it does not learn."""
        m = cls(settings, feature_names, max_eval_steps=max_eval_steps)
        if len(names) != models.obj_start.shape[0] - 1:
            raise ValueError(f"{len(names)} names for {models.obj_start.shape[0] - 1} object models")
        pfd = models.node_pfd
        if np.any((pfd != 0) & (pfd != 1)):  # a model saved before the matcher's pfd was 0/1
            models = models._replace(node_pfd=curvature_defined(pfd))
        m._model = models
        m._names = tuple(names)
        return m

    @classmethod
    def from_saved(cls, settings: EvidenceSettings, feature_names: tuple[str, ...], models: kev.ObjectModels,
                   order: np.ndarray, names: tuple[str, ...], saved_grid: tuple[float, int],
                   max_eval_steps: int = 500) -> "EvidenceModel":
        """A model over saved object models (``models`` sorted into the node grid of
        ``saved_grid`` = (max_match_distance, max_nneighbors), ``order`` the sort from
        the learned node order). When ``settings`` asks for another match radius or
        neighbour count, the grid is rebuilt from the learned order, exactly as training
        with those settings would have built it."""
        mmd, k = saved_grid
        if (np.float32(settings.max_match_distance) == np.float32(mmd)
                and int(settings.max_nneighbors) == int(k)):
            m = cls.from_arrays(settings, feature_names, models, names, max_eval_steps=max_eval_steps)
            m._order = order
            return m
        learned = [np.empty_like(a) for a in (models.node_pos, models.node_pose, models.node_pfd, models.node_feat)]
        for out, a in zip(learned, (models.node_pos, models.node_pose, models.node_pfd, models.node_feat)):
            out[order] = a
        pos, pose, pfd, feat = learned
        new_order, origin, index, cand_start, cand_node, cand_dist = kev.build_node_grid(
            pos, models.obj_start, settings.max_match_distance, settings.max_nneighbors)
        rebuilt = kev.object_models(pos[new_order], pose[new_order], pfd[new_order], feat[new_order],
                                    models.obj_start, origin, index, cand_start, cand_node, cand_dist,
                                    kev.candidate_codes(cand_node, cand_dist, settings.max_match_distance))
        m = cls.from_arrays(settings, feature_names, rebuilt, names, max_eval_steps=max_eval_steps)
        m._order = new_order
        return m

    # ------------------------------------------------------------------ training

    def learn(self, label: str, location, pose_vectors, pose_defined, features, rotation_quaternion) -> int:
        """Add one supervised training episode; returns the object's node count."""
        if self._names is not None:
            raise RuntimeError("a model built from arrays (from_arrays) does not learn")
        self._model = None
        q = quat_to_matrix(np.asarray(rotation_quaternion, np.float32)).astype(np.float32)
        return self.memory.add_episode(label, np.ascontiguousarray(location, np.float32),
                                       np.ascontiguousarray(pose_vectors, np.float32),
                                       np.ascontiguousarray(pose_defined, bool),
                                       np.ascontiguousarray(features, np.float32), q)

    @property
    def object_names(self) -> tuple[str, ...]:
        return self._names if self._names is not None else self.memory.labels

    def model_arrays(self):
        """The flat model (nodes sorted into the search grid); built once after training."""
        if self._model is None:
            g = self.memory.arrays()
            order, origin, index, cand_start, cand_node, cand_dist = kev.build_node_grid(
                g.node_pos, g.obj_start, self.settings.max_match_distance, self.settings.max_nneighbors)
            self._order = order
            self._model = kev.object_models(
                g.node_pos[order], g.node_pose[order], curvature_defined(g.node_pfd[order]),
                np.asarray(g.node_feat[order], np.float32).reshape(len(order), -1), g.obj_start,
                origin, index, cand_start, cand_node, cand_dist,
                kev.candidate_codes(cand_node, cand_dist, self.settings.max_match_distance),
            )
        return self._model

    def node_order(self) -> np.ndarray:
        """int64 (N,): row i of ``model_arrays()``'s nodes is row ``order[i]`` of the learned
        (memory) order; what a saved model keeps so that its grid can be rebuilt."""
        self.model_arrays()
        return self._order

    @property
    def nodes_per_object(self) -> list[int]:
        if self._names is not None:
            return [int(n) for n in np.diff(self._model.obj_start)]
        return [self.memory.n_nodes(label) for label in self.memory.labels]

    # ------------------------------------------------------------------ hypotheses

    def _hypotheses(self, capacity: int):
        """The hypothesis arrays (``kev.Hypotheses``), grown (rows kept) to hold ``capacity`` rows."""
        old = self._hyp
        if old is not None and old.obj.shape[0] >= capacity:
            return old
        cap = max(capacity, 1024 if old is None else 2 * old.obj.shape[0])
        self._hyp = kev.new_hypotheses(cap) if old is None else kev.grow_hypotheses(old, cap)
        return self._hyp

    def initial_capacity(self) -> int:
        """Rows for a first step: the classic updater's r N, or one burst step of 0.4 N."""
        n = int(self.model_arrays().obj_start[-1])
        s = self.settings
        if s.updater == "classic":
            return n * max(2, s.umbilical_num_poses)
        return max(1024, int(2 * n * min(s.sampling_multiplier, max(2, s.umbilical_num_poses)) + 16))

    def new_state(self):
        """The kernels' state before an episode (``kev.State``)."""
        return kev.new_state(len(self.object_names))

    def run_episode(self, location, pose_vectors, pose_defined, features, *, stepwise: bool = False,
                    on_step=None):
        """Evaluate one episode's observations; returns ``(code, istate, trace, seconds)``.

        ``location`` float32 (T, 3), ``pose_vectors`` float32 (T, 3, 3), ``pose_defined``
        bool (T,), ``features`` float32 (T, F) (``matching_features``). ``stepwise``: one
        kernel call per step, ``on_step(t, istate, obj_max)`` after each.
        """
        model = self.model_arrays()
        prm = kev.params(self.feature_spec, self.fparams, self.iparams)
        n_obj = len(model.obj_start) - 1
        T = location.shape[0]
        feats = np.ascontiguousarray(features, np.float32)
        ncurv = len(CURVATURE_FEATURES)
        kappa = np.abs(feats[:, -ncurv:]).max(axis=1) if T else np.zeros(0)
        obs = kev.observations(location, pose_vectors, pose_defined, feats, kappa)
        st = self.new_state()
        istate = st.istate
        trace = np.full((T, n_obj), -np.inf, np.float32)
        hyp = self._hypotheses(self.initial_capacity())
        t = 0
        code = kev.RUNNING
        seconds = 0.0
        while t < T:
            if stepwise:
                t0 = time.perf_counter()
                code = kev.evidence_step(model, prm, st, hyp, obs, t)
                seconds += time.perf_counter() - t0
                if code != kev.NEED_CAPACITY:
                    trace[t] = np.where(st.obj_count > 0, st.obj_max, -np.inf)
                    if on_step is not None:
                        on_step(t, istate, st.obj_max)
                    t += 1
            else:
                t0 = time.perf_counter()
                code, t = kev.evidence_episode(model, prm, st, hyp, obs, t, trace)
                seconds += time.perf_counter() - t0
            if code == kev.NEED_CAPACITY:
                hyp = self._hypotheses(int(istate[kev.IS_NEED]))
                continue
            if code != kev.RUNNING:
                break
        return code, istate, trace[: int(istate[kev.IS_MATCHING_STEPS])], seconds

    def hypothesis_view(self, istate):
        """The hypothesis rows in use after an episode: obj, loc, rot (H, 3, 3), ev, possible.

        Rows of deleted hypotheses have ``obj == -1`` (and ``possible == 0``); the row
        index of ``istate[IS_MLH]`` refers to these arrays."""
        h = kev.rows_in_use(self._hyp, istate)
        return h.obj, h.loc, h.rot.reshape(-1, 3, 3), h.ev, h.possible

    def object_index(self, name: str) -> int:
        """The memory's index of the object called ``name``; -1 when it was never learned."""
        names = self.object_names
        return names.index(name) if name in names else -1

    def eval_episode(self, ds: EpisodeDataset, features: np.ndarray, e: int, *, stepwise: bool = False,
                     on_step=None) -> tuple:
        """Evaluate dataset episode ``e`` and score it against its recorded object and rotation.

        Returns ``(code, istate, trace, seconds, score)``: ``run_episode``'s results and
        ``score``'s dict. ``features``: the dataset's ``matching_features``.
        """
        code, istate, trace, secs = self.run_episode(*episode_steps(ds, features, e), stepwise=stepwise,
                                                     on_step=on_step)
        target = self.object_index(str(ds.object_names[int(ds.episode_object[e])]))
        return code, istate, trace, secs, self.score(code, istate, target, ds.episode_rotation[e])

    def score(self, code: int, istate, target: int, rotation_q) -> dict:
        """Outcome, detected object and rotation error of a finished episode (section 5.6)."""
        names = self.object_names
        obj, _, rot, ev, possible = self.hypothesis_view(istate)
        mlh = int(istate[kev.IS_MLH])
        q_true = quat_to_matrix(np.asarray(rotation_q, np.float32)).astype(np.float64)
        mlh_obj = int(obj[mlh]) if mlh >= 0 else -1
        out = {"detected": None, "mlh_object": names[mlh_obj] if mlh_obj >= 0 else None,
               "mlh_correct": mlh_obj == target, "rotation_error_deg": None, "symmetric": False,
               "detected_rotation": None}
        name = _CODE_NAMES[code]
        if mlh >= 0:
            out["detected_rotation"] = project_rotation(rot[mlh]).T.astype(np.float32)
        if name == "match":
            det = int(istate[kev.IS_DETECTED])
            out["detected"] = names[det]
            out["symmetric"] = bool(istate[kev.IS_SYMMETRIC])
            name = "correct" if det == target else "confused"
            if name == "correct":
                if out["symmetric"] and possible.any():
                    # every pose still possible is an answer: the nearest one counts
                    preds = np.swapaxes(project_rotation(rot[possible.astype(bool)]), -1, -2)
                    out["rotation_error_deg"] = float(rotation_angle_deg(preds, q_true).min())
                else:
                    out["rotation_error_deg"] = rotation_angle_deg(out["detected_rotation"], q_true)
        elif name == "time_out" and out["mlh_correct"]:
            out["rotation_error_deg"] = rotation_angle_deg(out["detected_rotation"], q_true)
        out["outcome"] = name
        return out


# --------------------------------------------------------------------------- experiment


#: the events this model emits (no before_step: its stepwise path reports after each step)
HOOK_EVENTS = tuple(ev for ev in EVENTS if ev != "before_step")


@dataclass
class EvidenceRunResult:
    episodes: list[EvidenceEpisode]
    train_s: float
    compile_s: float
    run_s: float
    n_train_episodes: int
    nodes_per_object: list[int]
    object_names: tuple[str, ...]
    path: str
    model_path: str | None = None     # the saved model evaluated (None: trained in this run)
    model_digest: str | None = None   # its content digest
    trained_on: str | None = None     # the digest of the data it was trained on
    eval_threads: list[int] = field(default_factory=list)  # kernel threads the episodes ran with


class EvidenceExperiment:
    """Train the evidence model on a dataset's training episodes, then evaluate it.

    The evidence model's :class:`engine.run.registry.LearningModule`.

    Parameters
    ----------
    config : validated ``engine.config.Config`` with ``model.type: evidence``
    dataset : the observations (``EpisodeDataset``)
    data_s, data_compile_s : seconds taken to build ``dataset`` and to compile (or load)
        the sensor simulation's kernels, for the summary (None: not measured)
    """

    HOOK_EVENTS = HOOK_EVENTS

    def __init__(self, config, dataset: EpisodeDataset, *, progress: bool = False,
                 data_s: float | None = None, data_compile_s: float | None = None):
        self.config = config
        self.dataset = dataset
        self.progress = progress
        self.data_s, self.data_compile_s = data_s, data_compile_s
        self.features, self.feature_names = matching_features(dataset)
        self.model = EvidenceModel(config.evidence, self.feature_names,
                                   max_eval_steps=config.experiment.max_eval_steps)
        self.hooks = Hooks(HOOK_EVENTS)
        self.compile_s: float | None = None  # warmup()'s seconds
        # a second process compiling the episode kernel meanwhile (engine.run.background), set by build;
        # or the policy's in-loop episode kernel (a policy config's first run)
        self.episode_kernel_ahead = None
        self.policy_kernel_ahead = None
        #: the saved model this experiment evaluates (engine.run.model_file.SavedModel), set by
        #: use_saved_model; None: it trains
        self.saved = None

    def use_saved_model(self, saved, model: "EvidenceModel") -> None:
        """Evaluate ``model`` (built from the model file ``saved``) instead of training:
        ``train`` then learns nothing and takes 0 s."""
        self.saved = saved
        self.model = model

    @property
    def data(self) -> EpisodeDataset:
        """The observations (``build(cfg, data=...)`` takes them back: Dask workers get the run's)."""
        return self.dataset

    def add_hook(self, event: str, fn) -> None:
        """Register ``fn`` to be called with a ``HookEvent`` at ``event`` (one of ``HOOK_EVENTS``)."""
        self.hooks.add(event, fn)

    def _emit(self, event: str, **fields) -> None:
        self.hooks.emit(event, self, **fields)

    def _episode_rows(self, split: int) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.dataset.episode_split) == split)

    def _stepwise(self) -> bool:
        return self.config.execution.stepwise or self.hooks.has("after_step")

    def train(self) -> float:
        """All training epochs; returns the wall time (s)."""
        ds, cfg = self.dataset, self.config
        if self.saved is not None:
            return 0.0  # the model was learned when it was saved
        t0 = time.perf_counter()
        if cfg.experiment.do_train:
            rows = self._episode_rows(TRAIN)
            for epoch in range(cfg.experiment.n_train_epochs):
                self._emit("before_epoch", mode="train", epoch=epoch)
                for i, e in enumerate(rows):
                    self._emit("before_episode", mode="train", epoch=epoch, episode=i)
                    label = str(ds.object_names[int(ds.episode_object[e])])
                    n = self._learn_episode(label, e)
                    self._emit("after_episode", mode="train", epoch=epoch, episode=i, object=label, nodes=n)
                self._emit("after_epoch", mode="train", epoch=epoch)
        if self.model.object_names:
            self.model.model_arrays()
        return time.perf_counter() - t0

    def _learn_episode(self, label: str, e: int) -> int:
        """Learn dataset episode ``e`` as object ``label``; the nodes added."""
        ds = self.dataset
        return self.model.learn(label, *episode_steps(ds, self.features, e, self.config.experiment.max_train_steps),
                                ds.episode_rotation[e])

    def warmup(self) -> float:
        """Compile (or load from the cache) every kernel this run calls, on a toy model; seconds.

        Done before training, so that neither ``train_s`` nor the matching step times
        hold compile time (on a cold cache compiling the learning kernels alone takes
        ~10 s, over 10x the training).
        """
        ahead, self.episode_kernel_ahead = self.episode_kernel_ahead, None
        policy_ahead, self.policy_kernel_ahead = self.policy_kernel_ahead, None
        wait = {"before_episode_kernel": ahead.wait} if ahead is not None else {}
        try:
            t0 = time.perf_counter()
            if self.saved is not None:  # nothing is learned: the episode kernel is all this run calls
                if ahead is not None:
                    ahead.wait()
                self.compile_s = compile_episode_kernel(paths=(self._stepwise(),))
            else:
                self.compile_s = warmup_kernels(self.model.settings, paths=(self._stepwise(),), **wait)
            if policy_ahead is not None:  # its kernel is in the cache now (or, if it failed, compiled on first use)
                policy_ahead.wait()
                self.compile_s = time.perf_counter() - t0
        finally:
            for a in (ahead, policy_ahead):
                if a is not None:
                    a.stop()
        return self.compile_s

    def _warm_real_model(self) -> float:
        """Two steps on the real model (after training): milliseconds, and it keeps a
        compile out of the matching times should the real arrays' types ever differ from
        the toy model's. Seconds."""
        t0 = time.perf_counter()
        if self.model.object_names:
            ds = self.dataset
            n = min(2, ds.n_steps)
            self.model.run_episode(ds.location[:n], ds.pose_vectors[:n], ds.pose_defined[:n], self.features[:n],
                                   stepwise=self.config.execution.stepwise)
            rows = self._episode_rows(EVAL)
            if self.config.policy is not None and self.config.policy.in_loop and len(rows):
                from engine.models.evidence import policy_run  # compile or load the policy's episode kernel

                policy_run.eval_episode(self, int(rows[0]), stepwise=self.config.execution.stepwise, n_steps=2)
        return time.perf_counter() - t0

    def evaluate_episode(self, epoch: int, episode: int) -> EvidenceEpisode:
        """Evaluate evaluation episode ``episode`` (index among the dataset's evaluation
        episodes) with the trained model; its record. ``epoch`` only labels the record:
        the model does not change while evaluating."""
        rows = self._episode_rows(EVAL)
        if not 0 <= episode < len(rows):
            raise IndexError(f"evaluation episode {episode} out of range ({len(rows)} evaluation episodes)")
        if not self.model.object_names:
            raise RuntimeError("evaluate_episode needs a trained model: call train() first")
        ds, stepwise, e = self.dataset, self.config.execution.stepwise, rows[episode]
        on_step = self._step_hook(epoch, episode) if self.hooks.has("after_step") else None
        jumps = (0, 0, (), 0.0)
        if self.config.policy is not None and self.config.policy.in_loop:  # the sensor in the loop
            from engine.models.evidence import policy_run

            code, istate, trace, secs, sc, jumps = policy_run.eval_episode(
                self, e, stepwise=stepwise or on_step is not None, on_step=on_step)
        else:
            code, istate, trace, secs, sc = self.model.eval_episode(
                ds, self.features, e, stepwise=stepwise or on_step is not None, on_step=on_step)
        target = int(ds.episode_object[e])
        rec = EvidenceEpisode(epoch=epoch, episode=episode, object=str(ds.object_names[target]),
                              rotation=np.asarray(ds.episode_rotation[e], np.float32),
                              outcome=sc["outcome"], detected=sc["detected"], mlh_object=sc["mlh_object"],
                              mlh_correct=sc["mlh_correct"], steps=int(istate[kev.IS_MATCHING_STEPS]),
                              rotation_error_deg=sc["rotation_error_deg"], symmetric=sc["symmetric"],
                              n_hypotheses=live_hypotheses(istate), seconds=secs,
                              detected_rotation=sc["detected_rotation"], trace=trace,
                              jumps=jumps[0], jumps_on_object=jumps[1], jump_steps=jumps[2],
                              policy_seconds=jumps[3])
        return rec

    def run(self) -> EvidenceRunResult:
        cfg = self.config
        t_all = time.perf_counter()
        self._emit("before_experiment")
        compile_s = self.compile_s if self.compile_s is not None else self.warmup()
        train_s = self.train()
        compile_s += self._warm_real_model()
        episodes: list[EvidenceEpisode] = []
        rows = self._episode_rows(EVAL)
        if cfg.experiment.do_eval and len(rows) and not self.model.object_names:
            from engine.errors import UserError

            raise UserError(f"{cfg.source_file}: nothing was learned (no training episodes, or do_train is false), "
                            "so there is nothing to recognise")
        bar = None
        if self.progress and cfg.experiment.do_eval:
            from tqdm import tqdm

            bar = tqdm(total=len(rows) * cfg.experiment.n_eval_epochs, unit="episode", leave=False)
        share = CpuShare()  # each episode on the cores other processes leave free
        if cfg.experiment.do_eval and len(rows):
            share.start()
        try:
            for epoch in range(cfg.experiment.n_eval_epochs if cfg.experiment.do_eval else 0):
                self._emit("before_epoch", mode="eval", epoch=epoch)
                for i in range(len(rows)):
                    self._emit("before_episode", mode="eval", epoch=epoch, episode=i)
                    share.before_episode()
                    rec = self.evaluate_episode(epoch, i)
                    episodes.append(rec)
                    self._emit("after_episode", mode="eval", epoch=epoch, episode=i, record=rec)
                    if bar is not None:
                        bar.update(1)
                self._emit("after_epoch", mode="eval", epoch=epoch)
        finally:
            share.restore()
        if bar is not None:
            bar.close()
        result = self._result(episodes, train_s, compile_s, time.perf_counter() - t_all)
        result.eval_threads = sorted(share.used)
        self._emit("after_experiment", result=result)
        return result

    def evaluation_pairs(self) -> list[tuple[int, int]]:
        """(epoch, episode) of every evaluation episode, in the order ``run`` evaluates them."""
        exp = self.config.experiment
        n = len(self._episode_rows(EVAL))
        return [(p, i) for p in range(exp.n_eval_epochs if exp.do_eval else 0) for i in range(n)]

    def result_from_records(self, records, *, compile_s: float, run_s: float) -> EvidenceRunResult:
        """The result of a run whose evaluation episodes ``records`` (in ``evaluation_pairs``
        order) were evaluated elsewhere (``engine.run.workers``), after ``train``."""
        return self._result(list(records), 0.0 if self.saved is not None else None, compile_s, run_s)

    def _result(self, episodes, train_s, compile_s, run_s) -> EvidenceRunResult:
        cfg = self.config
        saved = self.saved
        if saved is not None:
            n_train = int(saved.training["n_train_episodes"])
        else:
            n_train = len(self._episode_rows(TRAIN)) if cfg.experiment.do_train else 0
        return EvidenceRunResult(episodes=episodes, train_s=train_s, compile_s=compile_s,
                                   run_s=run_s,
                                   n_train_episodes=n_train,
                                   nodes_per_object=self.model.nodes_per_object,
                                   object_names=self.model.object_names,
                                   path="stepwise" if cfg.execution.stepwise else "fused",
                                   model_path=saved.path if saved is not None else None,
                                   model_digest=saved.digest if saved is not None else None,
                                   trained_on=saved.trained_on if saved is not None else None)

    def report(self, result: EvidenceRunResult):
        """summary.json, episodes.csv rows and the printed table (``engine.run.results.RunReport``)."""
        from engine.models.evidence import run as evidence_run

        return evidence_run.report(self.config, result, data_s=self.data_s, data_compile_s=self.data_compile_s)

    def write_extras(self, out_dir, result: EvidenceRunResult) -> list:
        """With ``experiment.plot_evidence``: one PNG per evaluation episode; their paths."""
        if not self.config.experiment.plot_evidence:
            return []
        from engine.models.evidence import run as evidence_run

        return evidence_run.write_plots(Path(out_dir), result)

    def _step_hook(self, epoch: int, episode: int):
        """The stepwise path's per-step callback that emits ``after_step``."""
        def on_step(t, istate, obj_max):
            self._emit("after_step", mode="eval", epoch=epoch, episode=episode, step=t,
                       n_hypotheses=live_hypotheses(istate), object_evidence=obj_max.copy())
        return on_step


def toy_observations(n: int = 64, radius: float = 0.05, seed: int = 0):
    """Points on a sphere with their exact geometry: (location, pose (n, 3, 3), pose_defined, curvature)."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    helper = np.where(np.abs(p[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    c1 = np.cross(p, helper)
    c1 /= np.linalg.norm(c1, axis=1, keepdims=True)
    pose = np.stack([p, c1, np.cross(p, c1)], axis=1).astype(np.float32)
    curvature = np.full((n, 2), -1.0 / radius, np.float32)
    return (p * radius).astype(np.float32), pose, np.zeros(n, bool), curvature


def warmup_sensor_kernels() -> float:
    """Compile (or load from the cache) the sensor simulation's kernels (surface fit, walk); seconds.

    Runs them on a small icosphere: on a cold cache this is ~12 s, which would
    otherwise hide inside the time to simulate a dataset.
    """
    import trimesh

    from engine.data import sensor

    t0 = time.perf_counter()
    surface = sensor.sample_surface(trimesh.creation.icosphere(subdivisions=2, radius=0.05), n_points=300)
    sensor.walk(surface, 4, np.random.default_rng(0))
    return time.perf_counter() - t0


def toy_models(loc, pose, pfd, logk, max_match_distance: float) -> kev.ObjectModels:
    """Two toy objects (the points ``loc`` and ``loc / 2``) with a one-cell search grid each,
    built in NumPy: arrays of the real models' types, so the episode kernel compiles for them
    without the graph and KD-tree kernels a real model is built with."""
    node_pos = np.concatenate([loc, loc * np.float32(0.5)])
    n = len(loc)
    cell = np.float32(max_match_distance) / np.float32(kev.CELLS_PER_RADIUS)
    origin = np.stack([node_pos[:n].min(axis=0), node_pos[n:].min(axis=0)]) - cell
    return kev.object_models(
        node_pos, np.concatenate([pose, pose]).reshape(2 * n, 9), np.concatenate([pfd, pfd]).astype(np.float32),
        np.concatenate([logk, logk]), np.array([0, n, 2 * n]), origin, np.array([[1, 1, 1, 0], [1, 1, 1, 1]]),
        np.array([0, n, 2 * n]), np.arange(2 * n), np.zeros(2 * n),
        kev.candidate_codes(np.arange(2 * n), np.zeros(2 * n), max_match_distance))


def toy_model():
    """A two-object model on toy observations (``toy_observations``), built in NumPy, with the
    numba types of learned ones: ``(EvidenceModel, (location, pose, pose_defined, log curvature))``."""
    settings = EvidenceSettings()
    loc, pose, pfd, curv = toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    model = EvidenceModel.from_arrays(settings, CURVATURE_FEATURES,
                                      toy_models(loc, pose, pfd, logk, settings.max_match_distance), ("a", "b"),
                                      max_eval_steps=4)
    return model, (loc, pose, pfd, logk)


def compile_episode_kernel(paths=(False,)) -> float:
    """Compile (or load) the evidence episode kernel alone, on toy models; seconds.

    What a second process runs while a first run's main process compiles the sensor and
    learning kernels (``engine.models.evidence.run.build``); the episode kernel's
    signature depends on array types only, which the toy models share with real ones.
    """
    t0 = time.perf_counter()
    model, (loc, pose, pfd, logk) = toy_model()
    for stepwise in paths:
        model.run_episode(loc[:4], pose[:4], pfd[:4], logk[:4], stepwise=bool(stepwise))
    return time.perf_counter() - t0


def warmup_kernels(settings: EvidenceSettings, simulate: bool = False, paths=(False, True),
                   before_episode_kernel=None) -> float:
    """Compile (or load from the cache) every kernel the evidence model runs, on a toy model.

    Kernel signatures depend on array types only, so a two-object toy model compiles
    what a real run uses: graph building, the node grid, the evaluation paths in
    ``paths`` (``False`` the fused episode kernel, ``True`` the stepwise one); with
    ``simulate`` also the sensor's (surface fit and walk, on a small icosphere).
    Returns the seconds taken.
    """
    t0 = time.perf_counter()
    if simulate:
        warmup_sensor_kernels()
    loc, pose, pfd, curv = toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    model = EvidenceModel(settings, CURVATURE_FEATURES, max_eval_steps=4)
    identity = np.array([1, 0, 0, 0], np.float32)
    model.learn("a", loc, pose, pfd, logk, identity)
    model.learn("b", loc * np.float32(0.5), pose, pfd, logk, identity)
    model.model_arrays()
    if before_episode_kernel is not None:  # e.g. wait for another process compiling the episode kernel
        before_episode_kernel()
    for stepwise in paths:
        model.run_episode(loc[:4], pose[:4], pfd[:4], logk[:4], stepwise=bool(stepwise))
    return time.perf_counter() - t0
