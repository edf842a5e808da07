"""The evidence kernels' state layout, declared once.

Everything the evidence step reads or writes travels in five named tuples of arrays
(numba passes a ``collections.namedtuple`` of arrays into a kernel, and the kernel
reads its fields by name), plus the scalar slots of the parameter and state arrays:

- :class:`ObjectModels`  the learned object models and their node grid (read-only);
- :class:`Params`        the settings: feature spec, float and int parameters;
- :class:`State`         the episode's scalar state and the per-object outputs;
- :class:`Hypotheses`    the hypothesis rows (grown by :func:`grow_hypotheses`);
- :class:`Observations`  an episode's observations, one row per step.

Each tuple's fields are declared once, with dtype and shape, in a
``*_FIELDS`` table; allocation (:func:`new_hypotheses`, :func:`new_state`), growth
(:func:`grow_hypotheses`) and the compaction kernel (which loops over the tuple's
fields) are derived from the tables, so a new hypothesis field is one line in
``HYPOTHESIS_FIELDS`` plus the code that computes it.

Scalar slots: ``fparams`` float32 (``FP_*``), ``iparams`` int64 (``IP_*``),
``istate`` int64 (``IS_*``), ``fstate`` float32 (``FS_*``), and the two small
per-step arrays the vector-lane passes read: ``path_par`` float32 (``PP_*``,
``kernels.lane_paths``) and ``ev_par`` float32 (``EP_*``, ``kernels.lane_evidence``).
No other module indexes these arrays by number.

This module imports nothing from the other kernels (they import it).
"""

from collections import namedtuple

import numpy as np

# --------------------------------------------------------------------------- scalar slots

# fparams (float32)
FP_MMD = 0  # max_match_distance (m)
FP_W_NORMAL = 1  # feature_weights.pose_vectors[0]
FP_W_CURV = 2  # feature_weights.pose_vectors[1]
FP_PAST = 3  # past_weight
FP_PRESENT = 4  # present_weight
FP_INCREMENT = 5  # feature_evidence_increment
FP_SAMPLING = 6  # sampling_multiplier
FP_DELETION_SLOPE = 7  # deletion_trigger_slope
FP_BURST_SLOPE = 8  # burst_trigger_slope
FP_X_PERCENT = 9  # x_percent_threshold
FP_OBJECT_THRESHOLD = 10  # object_evidence_threshold
FP_PATH_SIMILARITY = 11  # path_similarity_threshold (m)
FP_POSE_SIMILARITY = 12  # pose_similarity_threshold (rad)
N_FPARAMS = 13

# iparams (int64)
IP_K = 0  # max_nneighbors
IP_UPDATER = 1  # UPDATER_CLASSIC or UPDATER_BURST
IP_UMBILICAL = 2  # umbilical_num_poses
IP_BURST_DURATION = 3  # sampling_burst_duration
IP_MIN_AGE = 4  # slope tracker min_age
IP_MIN_STEPS = 5  # min_eval_steps
IP_MAX_STEPS = 6  # max_eval_steps (matching steps)
IP_SYMMETRY = 7  # required_symmetry_evidence
N_IPARAMS = 8

UPDATER_CLASSIC = 0
UPDATER_BURST = 1

# istate (int64)
IS_N_HYP = 0  # hypothesis rows in use
IS_BURST_LEFT = 1  # burst steps left
IS_STEP = 2  # feature steps processed (ring index of Hypotheses.buf)
IS_MATCHING_STEPS = 3
IS_SYMMETRY = 4  # symmetry evidence counter
IS_MLH = 5  # row of the most likely hypothesis (-1: none)
IS_OUTCOME = 6  # RUNNING, MATCH, NO_MATCH, TIME_OUT
IS_DETECTED = 7  # detected object (match), -1 otherwise
IS_SYMMETRIC = 8  # 1 when the match was declared by symmetry
IS_N_POSSIBLE = 9  # possible objects after the last step
IS_NEED = 10  # capacity the last call needed (when it returned NEED_CAPACITY)
IS_N_NEW = 11  # hypotheses sampled by the last step
IS_N_DEAD = 12  # deleted rows among the first IS_N_HYP (obj -1), compacted away later
N_ISTATE = 13

# fstate (float32)
FS_X_LAST = 0  # 3 slots from here: the last sensed location x, y, z
FS_SLOPE_MAX = 3  # largest finite slope after the last step (-inf: none)
FS_MLH_EV = 4  # evidence of the most likely hypothesis (-inf: none)
N_FSTATE = 5

# path_par (float32): what the deletion test and path integration of one step read
PP_DISP = 0  # 3 slots: the sensor's displacement since the last step (dx, dy, dz)
PP_NORMAL = 3  # 3 slots: the sensed surface normal (body frame)
PP_DIR1 = 6  # 3 slots: the sensed first curvature direction (body frame)
PP_DELETING = 9  # 1 when stale hypotheses are deleted this step, else 0
PP_MIN_AGE = 10  # a hypothesis younger than this is kept
PP_SLOPE_MIN = 11  # deletion_trigger_slope: a slope below it (or NaN) deletes
N_PATH_PAR = 12

# ev_par (float32): what the scoring of the found nodes reads
EP_INV_KAPPA = 0  # 1 / (|kappa| + 0.5), the surface-aware distance's weight
EP_MMD = 1  # max_match_distance
EP_W_NORMAL = 2  # weight of the normal's pose evidence
EP_W_CURV = 3  # weight of the curvature direction's pose evidence
EP_POSE_DEFINED = 4  # 1 when the sensed curvature directions are defined, else 0
N_EV_PAR = 5

# outcome codes
RUNNING = 0
MATCH = 1
NO_MATCH = 2
TIME_OUT = 3
NEED_CAPACITY = -1

#: Evidences kept per hypothesis for the slope (tbp.monty's tracker window); the
#: kernels take the window from ``Hypotheses.buf.shape[1]``.
SLOPE_WINDOW = 10

#: Node grid cells are ``max_match_distance / CELLS_PER_RADIUS`` wide.
CELLS_PER_RADIUS = 2
#: A candidate's coded distance counts steps of ``cell / CODE_STEPS_PER_CELL`` (a power of
#: two: the step is exact); the farthest candidate, ``(CELLS_PER_RADIUS + sqrt(3) / 2)``
#: cells from its cell's centre, is ~735 steps, within ``kernels.lanes.CODE_MASK``.
CODE_STEPS_PER_CELL = 256

# --------------------------------------------------------------------------- array groups
# (name, dtype, shape); a string in a shape is a size known at run time: N nodes, O objects,
# C cells, M candidates, F feature columns, cap hypothesis rows, W the slope window, T steps.

#: Object models (all objects concatenated, object ``o`` owns nodes ``obj_start[o] ..
#: obj_start[o + 1]``, sorted by their cell of the object's node grid) and the node grid
#: (``kernels.evidence.build_node_grid``).
MODEL_FIELDS = (
    ("node_pos", np.float32, ("N", 3)),     # node locations, model frame
    ("node_pose", np.float32, ("N", 9)),    # rows normal, curvature direction 1, direction 2
    ("node_pfd", np.float32, ("N",)),       # 1 where the node's curvature directions are defined
    ("node_feat", np.float32, ("N", "F")),  # matching features (hue, log curvatures, ...)
    ("obj_start", np.int64, ("O+1",)),      # each object's first node, then N
    ("grid_origin", np.float32, ("O", 3)),  # low corner of each object's grid
    ("grid_index", np.int64, ("O", 4)),     # cells along x, y, z; the object's first cell
    ("cand_start", np.int64, ("C+1",)),     # each cell's first candidate, then M
    ("cand_node", np.int32, ("M",)),        # candidate node rows, nearest to the cell centre first
    ("cand_dist", np.float32, ("M",)),      # their distances to the cell centre (a lower bound)
    ("cand_code", np.int32, ("M",)),        # both in one int32, what the step's search reads
)                                           # (kernels.lanes.CODE_BITS; candidate_codes builds it)

#: Hypothesis rows: the first ``istate[IS_N_HYP]`` are in use, all objects mixed. A
#: deleted row is *dead*: ``obj == -1``. Every field has ``cap`` rows (growth and
#: compaction move whole rows of every field).
HYPOTHESIS_FIELDS = (
    ("obj", np.int32, ("cap",)),          # the row's object (-1: dead)
    ("loc", np.float32, ("cap", 3)),      # location on the object, model frame
    ("rot", np.float32, ("cap", 9)),      # row-major R with v_model = R v_body
    ("ev", np.float32, ("cap",)),         # evidence
    ("slope", np.float32, ("cap",)),      # evidence slope (NaN until two evidences are known)
    ("age", np.int32, ("cap",)),          # steps since the row was sampled
    ("possible", np.uint8, ("cap",)),     # in the last terminal check's possible set
    ("buf", np.float32, ("cap", "W")),    # the last W evidences, a ring indexed by the step
)

#: Settings (one kernel signature for every setting).
PARAM_FIELDS = (
    ("feat_spec", np.float32, (3, "F")),  # rows tolerance, weight, circular (1: wraps around, range 1)
    ("fparams", np.float32, (N_FPARAMS,)),  # FP_* slots
    ("iparams", np.int64, (N_IPARAMS,)),    # IP_* slots
)

#: An episode's scalar state and the per-object outputs of its last step.
STATE_FIELDS = (
    ("istate", np.int64, (N_ISTATE,)),    # IS_* slots
    ("fstate", np.float32, (N_FSTATE,)),  # FS_* slots
    ("obj_max", np.float32, ("O",)),      # each object's best evidence after the last step
    ("obj_count", np.int64, ("O",)),      # each object's live hypotheses after the last step
)

#: An episode's observations (step t is row t of every field).
OBSERVATION_FIELDS = (
    ("location", np.float32, ("T", 3)),     # sensed location
    ("pose", np.float32, ("T", 9)),         # rows normal, curvature direction 1, direction 2
    ("pose_defined", np.bool_, ("T",)),     # curvature directions defined
    ("features", np.float32, ("T", "F")),   # matching features
    ("kappa", np.float32, ("T",)),          # the larger absolute log curvature
)

ObjectModels = namedtuple("ObjectModels", [f[0] for f in MODEL_FIELDS])
Hypotheses = namedtuple("Hypotheses", [f[0] for f in HYPOTHESIS_FIELDS])
Params = namedtuple("Params", [f[0] for f in PARAM_FIELDS])
State = namedtuple("State", [f[0] for f in STATE_FIELDS])
Observations = namedtuple("Observations", [f[0] for f in OBSERVATION_FIELDS])


def _as(fields, cls, arrays):
    """``cls`` of ``arrays`` as C-contiguous arrays of each field's dtype, checking each rank
    (and each fixed size)."""
    arrays = tuple(arrays)
    if len(arrays) != len(fields):
        raise ValueError(f"{cls.__name__} takes {len(fields)} arrays ({', '.join(f[0] for f in fields)}), "
                         f"got {len(arrays)}")
    out = []
    for (name, dtype, shape), a in zip(fields, arrays, strict=True):
        a = np.ascontiguousarray(a, dtype)
        if a.ndim != len(shape) or any(not isinstance(d, str) and d != n for d, n in zip(shape, a.shape)):
            raise ValueError(f"{cls.__name__}.{name} must have shape {shape}, got {a.shape}")
        out.append(a)
    return cls(*out)


def object_models(*arrays, **named) -> ObjectModels:
    """An :class:`ObjectModels` of C-contiguous arrays of the declared dtypes (positional in
    ``MODEL_FIELDS`` order, or by name)."""
    if named:
        arrays = tuple(arrays) + tuple(named[f[0]] for f in MODEL_FIELDS[len(arrays):])
    return _as(MODEL_FIELDS, ObjectModels, arrays)


def params(feat_spec, fparams, iparams) -> Params:
    """A :class:`Params` of C-contiguous arrays of the declared dtypes."""
    return _as(PARAM_FIELDS, Params, (feat_spec, fparams, iparams))


def observations(location, pose, pose_defined, features, kappa) -> Observations:
    """An :class:`Observations` of C-contiguous arrays of the declared dtypes; ``pose`` may be
    (T, 3, 3)."""
    location = np.asarray(location)
    pose = np.asarray(pose, np.float32).reshape(location.shape[0], 9)
    return _as(OBSERVATION_FIELDS, Observations, (location, pose, pose_defined, features, kappa))


def new_hypotheses(cap: int, window: int = SLOPE_WINDOW) -> Hypotheses:
    """Zeroed hypothesis arrays of ``cap`` rows (``HYPOTHESIS_FIELDS``)."""
    sizes = {"cap": cap, "W": window}
    return Hypotheses(*(np.zeros(tuple(sizes.get(d, d) for d in shape), dtype) for _, dtype, shape in HYPOTHESIS_FIELDS))


def grow_hypotheses(hyp: Hypotheses, cap: int, n_rows: int | None = None) -> Hypotheses:
    """New arrays of ``cap`` rows holding ``hyp``'s first ``n_rows`` rows (all by default)."""
    old_cap = hyp.obj.shape[0]
    n = old_cap if n_rows is None else n_rows
    new = new_hypotheses(cap, hyp.buf.shape[1])
    for a, b in zip(hyp, new):
        b[:n] = a[:n]
    return new


def new_state(n_obj: int) -> State:
    """The state before an episode's first step: no hypotheses, no MLH, no detection."""
    istate = np.zeros(N_ISTATE, np.int64)
    istate[IS_MLH] = -1
    istate[IS_DETECTED] = -1
    fstate = np.zeros(N_FSTATE, np.float32)
    fstate[FS_SLOPE_MAX] = -np.inf
    return State(istate, fstate, np.zeros(n_obj, np.float32), np.zeros(n_obj, np.int64))


def rows_in_use(hyp: Hypotheses, istate) -> Hypotheses:
    """Views of the hypothesis rows in use (``istate[IS_N_HYP]`` of them); dead rows have
    ``obj == -1``, and the row of ``istate[IS_MLH]`` refers to these views."""
    n = int(istate[IS_N_HYP])
    return Hypotheses(*(a[:n] for a in hyp))


def hypothesis_row_bytes(window: int = SLOPE_WINDOW) -> int:
    """Bytes of one hypothesis row over all of ``HYPOTHESIS_FIELDS`` (for memory estimates)."""
    sizes = {"cap": 1, "W": window}
    return sum(int(np.prod([sizes.get(d, d) for d in shape])) * np.dtype(dtype).itemsize
               for _, dtype, shape in HYPOTHESIS_FIELDS)
