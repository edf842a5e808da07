"""Whole-episode core loops of the ``similarity`` model, and the single steps.

Fused path: ``run_experiment`` runs every training epoch and then every
evaluation epoch in one compiled call; ``train_episodes`` and
``eval_episodes`` run any subset (one epoch, one episode) when the
orchestrator must return to Python in between (per-epoch or per-episode hooks).

Stepwise path: ``train_step`` and ``match_step`` do one step each, for the
orchestrator's debugging/profiling loop. They share the arithmetic of the fused
loops (``kernels.matching``), so both paths give identical numbers.

Episodes are given as ``starts, stops`` (int64 (E,)) into the rows of the
observation arrays ``location`` (float32 (T, 3)) and ``features``
(float32 (T, F)). Each episode consumes at most ``max_steps`` steps.

Why an episode ended (``out_reason``): ``DONE`` (the confidence reached the
threshold at the last step), ``DATA_EXHAUSTED`` (the episode's observations
ran out, possibly exactly at the step limit), ``STEP_LIMIT`` (stopped by
``max_steps`` with observations left). Done takes precedence over the other two.
"""

from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from .compact import from_f32
from .matching import batch_into, mean_similarity_at, scan_into, update_confidence
from .nearest import nearest_into
from .timing import add_time, ticks

DONE = 0
DATA_EXHAUSTED = 1
STEP_LIMIT = 2
REASON_NAMES = ("done", "data_exhausted", "step_limit")

# Rows of the optional ``timers`` table (see ``kernels.timing``): the kernels a
# fused run spends its time in.
TIMED_KERNELS = ("train_episodes", "batch_similarity_at", "scan_segments")

# The grouped arguments of the compiled loops (named tuples of arrays and scalars:
# numba passes them as one argument each, fields by name, no bare indices).

#: The observations episodes index: ``location`` float32 (T, 3), ``features`` float32 (T, F).
Sensed = namedtuple("Sensed", ["location", "features"])

#: Training epochs: episodes ``starts, stops`` int64 (E,) (rows of ``Sensed``),
#: ``n_epochs`` int >= 0, ``max_steps`` int >= 0 (steps per episode at most).
TrainPlan = namedtuple("TrainPlan", ["starts", "stops", "n_epochs", "max_steps"])

#: What training writes, epoch-major (episode e of epoch p at ``p * E + e``): ``steps``
#: int64, ``stored`` int64 (stored observations after the episode), ``reason`` int8
#: (DATA_EXHAUSTED or STEP_LIMIT), each (n_epochs * E,).
TrainOutputs = namedtuple("TrainOutputs", ["steps", "stored", "reason"])

#: Evaluation epochs: ``starts, stops`` int64 (E,), ``n_epochs`` int >= 0 (all epochs'
#: episodes run as one pool), ``max_steps`` int >= 0, ``threshold`` float32 (the
#: confidence that ends an episode), ``chunk`` int >= 1 (steps per episode per round).
EvalPlan = namedtuple("EvalPlan", ["starts", "stops", "n_epochs", "max_steps", "threshold", "chunk"])

#: What evaluation writes, epoch-major, each (n_epochs * E,): ``steps`` int64 (steps
#: consumed), ``confidence`` float32 (at the episode's end; each episode starts from 0),
#: ``reason`` int8 (DONE, DATA_EXHAUSTED or STEP_LIMIT).
EvalOutputs = namedtuple("EvalOutputs", ["steps", "confidence", "reason"])


@njit(cache=True)
def training_steps_needed(starts, stops, max_steps, n_epochs):
    """Number of observations ``n_epochs`` training epochs over these episodes store."""
    total = 0
    for e in range(starts.shape[0]):
        total += min(stops[e] - starts[e], max_steps)
    return total * n_epochs


@njit(cache=True)
def train_step(store, n_stored, location, features, t):
    """Append observation ``t`` to the store; returns the new ``n_stored``.

    store : float32 (3 + F, capacity), written at column ``n_stored``.
    """
    if n_stored >= store.shape[1]:
        raise ValueError("store is full: allocate a larger capacity")
    store[0, n_stored] = from_f32(location[t, 0], store)
    store[1, n_stored] = from_f32(location[t, 1], store)
    store[2, n_stored] = from_f32(location[t, 2], store)
    for k in range(store.shape[0] - 3):
        store[3 + k, n_stored] = from_f32(features[t, k], store)
    return n_stored + 1


@njit(cache=True)
def match_step(store, n_stored, location, features, t, confidence):
    """One matching step on observation ``t``; returns ``(similarity, confidence)`` float32."""
    s = mean_similarity_at(store, n_stored, location, features, t)
    return s, update_confidence(np.float32(confidence), s)


@njit(cache=True)
def train_episodes(store, n_stored, location, features, starts, stops, max_steps,
                   out_steps, out_stored, out_reason):
    """Training epoch(s): append every episode's observations, in order.

    Parameters
    ----------
    store : float32 (3 + F, capacity), appended to from column ``n_stored``
    location : float32 (T, 3);  features : float32 (T, F)
    starts, stops : int64 (E,);  max_steps : int >= 0
    out_steps : int64 (E,), written: steps taken per episode
    out_stored : int64 (E,), written: stored observations after each episode
    out_reason : int8 (E,), written: DATA_EXHAUSTED or STEP_LIMIT

    Returns the new ``n_stored``. Raises ValueError if the store is too small.
    """
    return _train_epochs(store, n_stored, Sensed(location, features), TrainPlan(starts, stops, 1, max_steps),
                         TrainOutputs(out_steps, out_stored, out_reason), None)


@njit(inline="always")
def _train_epochs(store, n_stored, sensed, plan, out, timers):
    """Body of training: ``plan.n_epochs`` epochs over the episodes of ``plan``
    (``Sensed``, ``TrainPlan``, ``TrainOutputs``).

    Outputs are epoch-major (episode e of epoch p at ``p * E + e``, length
    ``n_epochs * E``). Inlined, and indexing the outputs instead of slicing
    them per epoch: a call of ``train_episodes`` per epoch cost ~190 ns beyond
    its copying (argument set-up and the slices' references), 10 times the
    copying itself on the 10 x 10 seed row. ``timers`` row 0 counts epochs.
    """
    location = sensed.location
    features = sensed.features
    starts = plan.starts
    stops = plan.stops
    n_epochs = plan.n_epochs
    max_steps = plan.max_steps
    out_steps = out.steps
    out_stored = out.stored
    out_reason = out.reason
    need = training_steps_needed(starts, stops, max_steps, n_epochs)
    if n_stored + need > store.shape[1]:
        raise ValueError("store is too small for these training episodes")
    n_feat = store.shape[0] - 3
    n_ep = starts.shape[0]
    n = n_stored
    for p in range(n_epochs):
        if timers is not None:
            t0 = ticks()
        for e in range(n_ep):
            length = stops[e] - starts[e]
            k = min(length, max_steps)
            for i in range(k):
                t = starts[e] + i
                store[0, n] = from_f32(location[t, 0], store)
                store[1, n] = from_f32(location[t, 1], store)
                store[2, n] = from_f32(location[t, 2], store)
                for f in range(n_feat):
                    store[3 + f, n] = from_f32(features[t, f], store)
                n += 1
            out_steps[p * n_ep + e] = k
            out_stored[p * n_ep + e] = n
            out_reason[p * n_ep + e] = DATA_EXHAUSTED if k == length else STEP_LIMIT
        if timers is not None:
            add_time(timers, 0, t0)
    return n


def eval_episodes(store, n_stored, location, features, starts, stops, max_steps, threshold, chunk,
                  out_steps, out_confidence, out_reason, timers=None):
    """Evaluation episodes against a fixed store, with early termination.

    A plain Python function: it groups its arguments and calls the compiled
    ``eval_episodes_grouped`` (``Sensed``, ``EvalPlan`` with one epoch,
    ``EvalOutputs``); call that directly from ``@njit`` code.

    All E episodes are independent (the store does not change during
    evaluation), so they advance together in rounds: each round takes the next
    ``chunk`` steps of every unfinished episode, computes all their
    similarities in one batch (parallel over queries), then scans each episode
    for the step where its confidence reaches ``threshold``. Work done past an
    episode's terminating step is therefore at most one chunk. A threshold
    above 1 can never be reached (similarities are <= 1, so the confidence
    stays below 1), and then each episode is one chunk.

    Parameters
    ----------
    store : float32 (3 + F, capacity);  n_stored : int
    location : float32 (T, 3);  features : float32 (T, F)
    starts, stops : int64 (E,);  max_steps : int >= 0
    threshold : float32;  chunk : int >= 1
    out_steps : int64 (E,), written: steps consumed
    out_confidence : float32 (E,), written: confidence at the episode's end
        (each episode starts from confidence 0)
    out_reason : int8 (E,), written: DONE, DATA_EXHAUSTED or STEP_LIMIT
    timers : optional int64 (len(TIMED_KERNELS), 2), added to: calls and
        ticks of the batch matching and the termination scan
    """
    eval_episodes_grouped(store, n_stored, Sensed(location, features),
                          EvalPlan(starts, stops, 1, max_steps, threshold, chunk),
                          EvalOutputs(out_steps, out_confidence, out_reason), timers)


@njit(cache=True, parallel=True)
def eval_episodes_grouped(store, n_stored, sensed, plan, out, timers=None):
    """``eval_episodes`` with grouped arguments: evaluation of ``plan.n_epochs``
    epochs of the episodes of ``plan`` against a fixed store.

    Parameters
    ----------
    store : float32 (3 + F, capacity);  n_stored : int
    sensed : ``Sensed``;  plan : ``EvalPlan``
    out : ``EvalOutputs``, written (epoch-major, each (plan.n_epochs * E,))
    timers : optional int64 (len(TIMED_KERNELS), 2), as ``eval_episodes``
    """
    _eval_rounds(store, n_stored, 0, 0.0, sensed, plan, out, timers)


def _similarities_into(m0, m1, m2, m3, location, features, steps, out):
    """Similarities of the query ``steps`` under a model (see the overload).

    This Python body runs only with NUMBA_DISABLE_JIT=1 (the profiling recipe);
    compiled code uses the overload below, which does the same.
    """
    if isinstance(m0, np.ndarray):
        batch_into(m0, m1, location, features, steps, out)
    else:
        nearest_into(m0, m1, m2, m3, location, features, steps, out)


@overload(_similarities_into, inline="always")
def _ol_similarities_into(m0, m1, m2, m3, location, features, steps, out):
    """The model is four plain arguments (a nested tuple of arrays breaks numba's parfor
    lowering): ``store, n_stored, -, -`` for ``similarity`` (``m0`` an array);
    ``tree, feats, k, max_distance`` for ``nearest`` (``m0`` a KDTree tuple)."""
    if isinstance(m0, types.Array):
        def impl(m0, m1, m2, m3, location, features, steps, out):
            batch_into(m0, m1, location, features, steps, out)
        return impl
    if isinstance(m0, types.BaseTuple):
        def impl(m0, m1, m2, m3, location, features, steps, out):
            nearest_into(m0, m1, m2, m3, location, features, steps, out)
        return impl
    return None


@njit(inline="always")
def _eval_rounds(m0, m1, m2, m3, sensed, plan, out, timers):
    """Body of the evaluating kernels, inlined into each (``Sensed``, ``EvalPlan``,
    ``EvalOutputs``; the model as in ``_similarities_into``).

    The episodes of all ``plan.n_epochs`` epochs are independent: they run as
    one pool, epoch-major. Inlined rather than called: a cached kernel that
    calls a parallel kernel crashes when loaded from numba's cache (see
    ``kernels.matching``). No NumPy array expressions here: in a parallel
    kernel each would start the thread pool. The arrays are taken out of the
    tuples before the parallel loops, which see plain arrays only.
    """
    location = sensed.location
    features = sensed.features
    max_steps = plan.max_steps
    threshold = plan.threshold
    chunk = plan.chunk
    out_steps = out.steps
    out_confidence = out.confidence
    out_reason = out.reason
    e_ev = plan.starts.shape[0]
    n_ep = plan.n_epochs * e_ev
    starts = np.empty(n_ep, dtype=np.int64)
    stops = np.empty(n_ep, dtype=np.int64)
    for p in range(plan.n_epochs):
        for e in range(e_ev):  # loops, not slice assignment: that would start threads
            starts[p * e_ev + e] = plan.starts[e]
            stops[p * e_ev + e] = plan.stops[e]
    limit = np.empty(n_ep, dtype=np.int64)
    active = np.empty(n_ep, dtype=np.bool_)
    longest = 0
    total = 0
    for e in range(n_ep):
        length = stops[e] - starts[e]
        limit[e] = min(length, max_steps)
        out_steps[e] = 0
        out_confidence[e] = np.float32(0.0)
        active[e] = limit[e] > 0
        if not active[e]:
            out_reason[e] = DATA_EXHAUSTED if length == 0 else STEP_LIMIT
        longest = max(longest, limit[e])
        total += limit[e]
    if threshold > np.float32(1.0) or chunk > longest:
        chunk = max(longest, 1)
    chunk = max(chunk, 1)

    cap = min(total, n_ep * chunk)
    steps = np.empty(cap, dtype=np.int64)
    sims = np.empty(cap, dtype=np.float32)
    seg = np.empty(n_ep + 1, dtype=np.int64)
    which = np.empty(n_ep, dtype=np.int64)
    conf = np.empty(n_ep, dtype=np.float32)
    consumed = np.empty(n_ep, dtype=np.int64)
    done = np.empty(n_ep, dtype=np.bool_)
    while True:
        q = 0
        m = 0
        seg[0] = 0
        for e in range(n_ep):
            if active[e]:
                k = min(chunk, limit[e] - out_steps[e])
                first = starts[e] + out_steps[e]
                for i in range(k):
                    steps[q] = first + i
                    q += 1
                which[m] = e
                conf[m] = out_confidence[e]
                m += 1
                seg[m] = q
        if m == 0:
            break
        if timers is not None:
            t0 = ticks()
        _similarities_into(m0, m1, m2, m3, location, features, steps[:q], sims[:q])
        if timers is not None:
            add_time(timers, 1, t0)
            t0 = ticks()
        scan_into(sims[:q], seg[:m + 1], conf[:m], threshold, consumed[:m], done[:m])
        if timers is not None:
            add_time(timers, 2, t0)
        for i in range(m):
            e = which[i]
            out_confidence[e] = conf[i]
            out_steps[e] += consumed[i]
            if done[i]:
                active[e] = False
                out_reason[e] = DONE
            elif out_steps[e] == limit[e]:
                active[e] = False
                out_reason[e] = DATA_EXHAUSTED if limit[e] == stops[e] - starts[e] else STEP_LIMIT


def run_experiment(store, n_stored, location, features,
                   train_starts, train_stops, n_train_epochs, max_train_steps,
                   eval_starts, eval_stops, n_eval_epochs, max_eval_steps, threshold, chunk,
                   out_train_steps, out_train_stored, out_train_reason,
                   out_eval_steps, out_eval_confidence, out_eval_reason, timers=None):
    """A whole experiment in one call: all training epochs, then all evaluation epochs.

    A plain Python function: it groups its arguments and calls the compiled
    ``run_experiment_grouped``; ``run_experiment_packed`` is the same run with
    its arguments packed into few arrays (the engine's call).

    Every epoch presents the same episodes (``train_*`` and ``eval_*`` int64
    (E_train,) / (E_eval,)). Outputs are laid out epoch-major: the entry of
    episode e of epoch p is at ``p * E + e``; their lengths are
    ``n_train_epochs * E_train`` (int64, int64, int8) and
    ``n_eval_epochs * E_eval`` (int64, float32, int8). See ``train_episodes``
    and ``eval_episodes`` for the meaning of each output.

    Returns ``n_stored`` after training (the store keeps growing across
    training epochs; evaluation never changes it). ``timers`` (optional, int64
    (len(TIMED_KERNELS), 2)) collects calls and ticks per kernel.
    """
    return run_experiment_grouped(
        store, n_stored, Sensed(location, features),
        TrainPlan(train_starts, train_stops, n_train_epochs, max_train_steps),
        EvalPlan(eval_starts, eval_stops, n_eval_epochs, max_eval_steps, threshold, chunk),
        TrainOutputs(out_train_steps, out_train_stored, out_train_reason),
        EvalOutputs(out_eval_steps, out_eval_confidence, out_eval_reason), timers)


@njit(cache=True, parallel=True)
def run_experiment_grouped(store, n_stored, sensed, train, evaluation, train_out, eval_out, timers=None):
    """``run_experiment`` with grouped arguments: all training epochs, then all evaluation epochs.

    Parameters
    ----------
    store : float32 (3 + F, capacity), appended to from column ``n_stored``
    sensed : ``Sensed``;  train : ``TrainPlan``;  evaluation : ``EvalPlan``
    train_out : ``TrainOutputs``, written;  eval_out : ``EvalOutputs``, written
    timers : optional int64 (len(TIMED_KERNELS), 2), added to

    Returns ``n_stored`` after training.
    """
    return _experiment(store, n_stored, sensed, train, evaluation, train_out, eval_out, timers)


# Header of a packed plan (``pack_plan``): its fields, in order, then the episodes.
PLAN_FIELDS = ("n_stored", "n_train_episodes", "n_train_epochs", "max_train_steps",
               "n_eval_episodes", "n_eval_epochs", "max_eval_steps", "chunk")
_PLAN_HEADER = len(PLAN_FIELDS)




def pack_plan(train_starts, train_stops, n_train_epochs, max_train_steps,
              eval_starts, eval_stops, n_eval_epochs, max_eval_steps, chunk, n_stored=0):
    """The integer inputs of ``run_experiment`` as one int64 array (see ``run_experiment_packed``).

    Layout: the ``PLAN_FIELDS`` header, then ``train_starts``, ``train_stops``,
    ``eval_starts``, ``eval_stops``. Returns int64 (8 + 2 E_train + 2 E_eval,).
    """
    parts = [np.asarray(a, np.int64).ravel() for a in (train_starts, train_stops, eval_starts, eval_stops)]
    if parts[0].shape != parts[1].shape or parts[2].shape != parts[3].shape:
        raise ValueError("starts and stops must have the same length")
    header = np.array([n_stored, parts[0].shape[0], n_train_epochs, max_train_steps,
                       parts[2].shape[0], n_eval_epochs, max_eval_steps, chunk], np.int64)
    if header.min() < 0 or chunk < 1:
        raise ValueError("counts and step limits must be >= 0 and chunk >= 1")
    return np.concatenate([header] + parts)


def packed_sizes(plan):
    """``(n_train, n_eval)``: the entries of training and of evaluation outputs a plan writes.

    ``run_experiment_packed`` takes ``counts`` int64 (2 n_train + n_eval,),
    ``confidence`` float32 (n_eval,) and ``reasons`` int8 (n_train + n_eval,).
    """
    return int(plan[1] * plan[2]), int(plan[4] * plan[5])


@njit(cache=True, parallel=True)
def run_experiment_packed(store, location, features, plan, threshold, counts, confidence, reasons, timers=None):
    """``run_experiment`` with its inputs and outputs packed into few arrays.

    Each argument of a call from Python costs ~100 ns to check and unpack;
    ``run_experiment``'s 21 took ~2 us, a tenth of the whole 10 x 10 seed row.

    Parameters
    ----------
    store : float32 (3 + F, capacity), written from column ``plan`` n_stored
    location : float32 (T, 3);  features : float32 (T, F)
    plan : int64, from ``pack_plan`` (step limits, epochs, chunk, episodes)
    threshold : float32
    counts : int64 (2 n_train + n_eval,), written: training steps, stored
        observations after each training episode, evaluation steps
        (``n_train, n_eval`` from ``packed_sizes(plan)``)
    confidence : float32 (n_eval,), written: confidence at each evaluation episode's end
    reasons : int8 (n_train + n_eval,), written: training, then evaluation reasons
    timers : as ``run_experiment``

    Returns ``n_stored`` after training.
    """
    h = _PLAN_HEADER
    e_tr = plan[1]
    e_ev = plan[4]
    n_tr = e_tr * plan[2]
    n_ev = e_ev * plan[5]
    if (plan.shape[0] != h + 2 * (e_tr + e_ev) or counts.shape[0] != 2 * n_tr + n_ev
            or confidence.shape[0] != n_ev or reasons.shape[0] != n_tr + n_ev):
        raise ValueError("plan and outputs do not match: see pack_plan and packed_sizes")
    a = h + e_tr
    b = a + e_tr
    c = b + e_ev
    return _experiment(store, plan[0], Sensed(location, features),
                       TrainPlan(plan[h:a], plan[a:b], plan[2], plan[3]),
                       EvalPlan(plan[b:c], plan[c:c + e_ev], plan[5], plan[6], threshold, plan[7]),
                       TrainOutputs(counts[:n_tr], counts[n_tr:2 * n_tr], reasons[:n_tr]),
                       EvalOutputs(counts[2 * n_tr:], confidence, reasons[n_tr:]), timers)


@njit(inline="always")
def _experiment(store, n_stored, sensed, train, evaluation, train_out, eval_out, timers):
    """Body of ``run_experiment_grouped`` and ``run_experiment_packed`` (inlined: it holds
    parallel loops). Evaluation episodes of all epochs are independent: one pool."""
    n = _train_epochs(store, n_stored, sensed, train, train_out, timers)
    if evaluation.n_epochs > 0:
        _eval_rounds(store, n, 0, 0.0, sensed, evaluation, eval_out, timers)
    return n


def nearest_eval_episodes(tree, feats, k, max_distance, location, features, starts, stops, max_steps, threshold,
                          chunk, out_steps, out_confidence, out_reason, timers=None):
    """``eval_episodes`` for the ``nearest`` model: the same rounds and termination scan,
    each round's similarities from batched k-nearest queries (``kernels.nearest``).

    A plain Python function: it groups its arguments and calls the compiled
    ``nearest_eval_episodes_grouped``.

    tree : KDTree over the stored positions;  feats : (F, n) stored features
    k : int >= 1;  max_distance : float (inf: no bound). Other arguments as ``eval_episodes``.
    """
    nearest_eval_episodes_grouped(tree, feats, k, max_distance, Sensed(location, features),
                                  EvalPlan(starts, stops, 1, max_steps, threshold, chunk),
                                  EvalOutputs(out_steps, out_confidence, out_reason), timers)


@njit(cache=True, parallel=True)
def nearest_eval_episodes_grouped(tree, feats, k, max_distance, sensed, plan, out, timers=None):
    """``nearest_eval_episodes`` with grouped arguments (``Sensed``, ``EvalPlan``,
    ``EvalOutputs``, as ``eval_episodes_grouped``); the model is ``tree`` (KDTree over
    the stored positions), ``feats`` ((F, n) stored features, float32 or uint16
    float16 bits), ``k`` int >= 1 and ``max_distance`` float (inf: no bound)."""
    _eval_rounds(tree, feats, np.int64(k), np.float64(max_distance), sensed, plan, out, timers)
