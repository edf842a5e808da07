"""Several evidence learning modules that vote: one per sensor patch (``evidence.n_modules``).

Each module is an :class:`engine.models.evidence.model.EvidenceModel` that learns its own
object models from its own patch's observations (every training episode shown through
each patch, as tbp.monty's 5-module pre-training does). An evaluation episode is one call
of ``kernels.evidence_voting.voting_episode``: all modules' steps and their votes, the
hypotheses of all modules in stacked flat arrays (row ``m`` of each is module ``m``'s).

The episode's record (``EvidenceEpisode``): the outcome of the modules together (section
5.5): ``correct`` / ``confused`` when at least ``evidence.min_lms_match`` modules matched
(the detected object is the one most of the matched modules name, ties to the lowest
module; its pose and rotation error are those of the first module that matched it),
``no_match`` when every module had no possible object, else ``time_out`` (the most likely
hypothesis is that of the module with the highest evidence). ``modules_matched`` counts
the modules that matched the detected object; ``module_outcomes`` holds each module's own
outcome (``correct``, ``confused``, ``no_match``, ``time_out``) for the per-module accuracy
of summary.json. ``trace`` is float32 (steps, M, O).
"""

from __future__ import annotations

import time
from collections import Counter

import numba
import numpy as np

from kernels import evidence as kev
from kernels import evidence_voting as kvv
from kernels import voting as kvote

from engine.data.dataset import EVAL, EpisodeDataset
from engine.errors import UserError
from engine.models.evidence.model import (
    CURVATURE_FEATURES, EvidenceEpisode, EvidenceExperiment, EvidenceModel, toy_models, toy_observations,
    live_hypotheses, matching_features,
)

_TRANSFORMS = {"transpose": kvote.VOTE_TRANSPOSE, "rotate": kvote.VOTE_ROTATE}


def sensor_features(ds: EpisodeDataset) -> list[np.ndarray]:
    """Each sensor's matching features (``matching_features`` of its patch): float32 (T, F + 2) each."""
    out = []
    for s in range(ds.n_sensors):
        steps = ds.sensor(s)
        view = EpisodeDataset(*steps, *(getattr(ds, k) for k in ("feature_names", "episode_offsets",
                                                                  "episode_object", "episode_rotation",
                                                                  "episode_split", "object_names")))
        out.append(matching_features(view)[0])
    return out


def vote_params(settings, n_modules: int):
    """The kernels' ``VoteParams`` of the settings (``voting: null``: no exchange at all)."""
    conn = kvote.connectivity(None if settings.voting is None else
                              settings.voting if isinstance(settings.voting, str) else
                              [list(v) for v in settings.voting], n_modules)
    return kvv.vote_params(conn, settings.vote_evidence_threshold, settings.vote_weight, settings.min_lms_match,
                           _TRANSFORMS[settings.vote_transform], settings.voting is not None and conn.any())


class ModulesModel:
    """``n`` evidence modules: their models, and the stacked hypothesis arrays they share."""

    def __init__(self, settings, feature_names, n_modules: int, max_eval_steps: int = 500):
        self.settings = settings
        self.n_modules = n_modules
        self.modules = [EvidenceModel(settings, feature_names, max_eval_steps=max_eval_steps)
                        for _ in range(n_modules)]
        self.vp = vote_params(settings, n_modules)
        self._models = None
        self._hyp = None

    @property
    def object_names(self):
        return self.modules[0].object_names

    @property
    def nodes_per_object(self) -> list[int]:
        """Nodes per object, summed over the modules."""
        per = [m.nodes_per_object for m in self.modules]
        return [int(sum(x)) for x in zip(*per)] if per and per[0] else []

    def model_arrays(self):
        if self._models is None:
            names = {m.object_names for m in self.modules}
            if len(names) != 1:
                raise RuntimeError("the modules learned different objects")
            self._models = kvv.module_models([m.model_arrays() for m in self.modules])
        return self._models

    def _hypotheses(self, capacity: int):
        old = self._hyp
        if old is not None and old.obj.shape[1] >= capacity:
            return old
        cap = max(capacity, 1024 if old is None else 2 * old.obj.shape[1])
        fresh = [kev.new_hypotheses(cap) for _ in range(self.n_modules)]
        if old is not None:
            for m in range(self.n_modules):
                for a, b in zip(old, fresh[m]):
                    b[:a.shape[1]] = a[m]
        self._hyp = kvv.stacked(fresh, kev.Hypotheses)
        return self._hyp

    def run_episode(self, obs_list, *, stepwise: bool = False, on_step=None):
        """Evaluate one episode (``obs_list``: each module's ``(location, pose_vectors,
        pose_defined, features)``); returns ``(code, state, trace, seconds)``: ``state`` the
        kernels' ``State`` with a module axis, ``trace`` float32 (steps, M, O).
        ``stepwise``: one kernel call per step, ``on_step(t, istate, obj_max)`` after each
        (``istate`` int64 (M, N_ISTATE), ``obj_max`` float32 (M, O), views)."""
        models = self.model_arrays()
        first = self.modules[0]
        prm = kev.params(first.feature_spec, first.fparams, first.iparams)
        ncurv = len(CURVATURE_FEATURES)
        per = []
        for location, pose_vectors, pose_defined, features in obs_list:
            feats = np.ascontiguousarray(features, np.float32)
            kappa = np.abs(feats[:, -ncurv:]).max(axis=1) if len(feats) else np.zeros(0)
            per.append(kev.observations(location, pose_vectors, pose_defined, feats, kappa))
        obs = kvv.stacked(per, kev.Observations)
        n_obj = models.obj_start.shape[1] - 1
        st = kvv.stacked([kev.new_state(n_obj) for _ in range(self.n_modules)], kev.State)
        T = obs.location.shape[1]
        trace = np.full((T, self.n_modules, n_obj), -np.inf, np.float32)
        hyp = self._hypotheses(first.initial_capacity())
        # the vote searches' bins: one per thread this episode runs on (engine.run.cpu_share may
        # have lowered it); results do not depend on it
        self.vp.ivote[kvv.IV_BINS] = numba.get_num_threads()
        t = 0
        code = kev.RUNNING
        seconds = 0.0
        while t < T:
            t0 = time.perf_counter()
            if stepwise:  # one call per step, on copies of the step's rows (the fused call's types)
                one = kev.Observations(*(np.ascontiguousarray(a[:, t:t + 1]) for a in obs))
                one_trace = np.empty((1, self.n_modules, n_obj), np.float32)
                code, nxt = kvv.voting_episode(models, prm, self.vp, st, hyp, one, 0, one_trace)
                if code != kev.NEED_CAPACITY:
                    trace[t] = one_trace[0]
                    if on_step is not None:
                        on_step(t, st.istate, trace[t])
                    t += 1
            else:
                code, t = kvv.voting_episode(models, prm, self.vp, st, hyp, obs, t, trace)
            seconds += time.perf_counter() - t0
            if code == kev.NEED_CAPACITY:
                hyp = self._hypotheses(int(st.istate[:, kev.IS_NEED].max()))
                continue
            if code != kev.RUNNING:
                break
        steps = int(st.istate[0, kev.IS_MATCHING_STEPS])
        return code, st, trace[:steps], seconds

    def module_view(self, m: int) -> EvidenceModel:
        """Module ``m``'s model with its rows of the stacked hypotheses (for ``score``)."""
        mod = self.modules[m]
        mod._hyp = kev.Hypotheses(*(a[m] for a in self._hyp))
        return mod


def _module_code(state: int) -> int:
    return {kev.MATCH: kev.MATCH, kev.NO_MATCH: kev.NO_MATCH}.get(int(state), kev.TIME_OUT)


class ModulesExperiment(EvidenceExperiment):
    """:class:`EvidenceExperiment` with ``evidence.n_modules`` modules that vote."""

    def __init__(self, config, dataset: EpisodeDataset, **kw):
        super().__init__(config, dataset, **kw)
        n = config.evidence.n_modules
        if dataset.n_sensors != n:
            raise UserError(f"{config.source_file}: the data has {dataset.n_sensors} sensor patches, "
                            f"evidence.n_modules is {n}")
        self.sensor_features = sensor_features(dataset)
        self.model = ModulesModel(config.evidence, self.feature_names, n,
                                  max_eval_steps=config.experiment.max_eval_steps)

    def _steps(self, s: int, e: int, max_steps: int | None = None):
        ds = self.dataset
        s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
        if max_steps is not None:
            s1 = min(s1, s0 + int(max_steps))
        a = ds.sensor(s)
        return a.location[s0:s1], a.pose_vectors[s0:s1], a.pose_defined[s0:s1], self.sensor_features[s][s0:s1]

    def _learn_episode(self, label: str, e: int) -> int:
        """Each module learns its own patch's observations of episode ``e``; the nodes added."""
        ds, max_steps = self.dataset, self.config.experiment.max_train_steps
        return sum(mod.learn(label, *self._steps(m, e, max_steps), ds.episode_rotation[e])
                   for m, mod in enumerate(self.model.modules))

    def _modules_step_hook(self, epoch: int, episode: int):
        """The stepwise path's callback that emits ``after_step`` with a module axis:
        ``n_hypotheses`` int64 (M,) live hypotheses per module, ``object_evidence`` float32
        (M, O) each module's best evidence per object (copies)."""
        def on_step(t, istate, obj_max):
            live = (istate[:, kev.IS_N_HYP] - istate[:, kev.IS_N_DEAD]).astype(np.int64)
            self._emit("after_step", mode="eval", epoch=epoch, episode=episode, step=t,
                       n_hypotheses=live, object_evidence=obj_max.copy())
        return on_step

    def warmup(self) -> float:
        """The one-module kernels (``EvidenceExperiment.warmup``), then the voting episode kernel
        on two toy modules."""
        secs = super().warmup()
        t0 = time.perf_counter()
        compile_voting_kernel(stepwise=self._stepwise())
        return secs + time.perf_counter() - t0

    def _warm_real_model(self) -> float:
        t0 = time.perf_counter()
        if self.model.object_names:
            rows = self._episode_rows(EVAL)
            if len(rows):
                e = rows[0]
                self.model.run_episode([tuple(a[:2] for a in self._steps(m, e)) for m in range(self.model.n_modules)],
                                       stepwise=self._stepwise())
        return time.perf_counter() - t0

    def evaluate_episode(self, epoch: int, episode: int) -> EvidenceEpisode:
        rows = self._episode_rows(EVAL)
        if not 0 <= episode < len(rows):
            raise IndexError(f"evaluation episode {episode} out of range ({len(rows)} evaluation episodes)")
        if not self.model.object_names:
            raise RuntimeError("evaluate_episode needs a trained model: call train() first")
        ds, e = self.dataset, rows[episode]
        model = self.model
        on_step = self._modules_step_hook(epoch, episode) if self.hooks.has("after_step") else None
        code, st, trace, secs = model.run_episode([self._steps(m, e) for m in range(model.n_modules)],
                                                  stepwise=self._stepwise(), on_step=on_step)
        istate = st.istate
        target_name = str(ds.object_names[int(ds.episode_object[e])])
        target = model.modules[0].object_index(target_name)
        scores = []
        for m in range(model.n_modules):
            scores.append(model.module_view(m).score(_module_code(istate[m, kev.IS_OUTCOME]), istate[m], target,
                                                     ds.episode_rotation[e]))
        matched = [m for m in range(model.n_modules) if istate[m, kev.IS_OUTCOME] == kev.MATCH]
        sc = None
        modules_matched = 0
        if code == kev.MATCH and matched:
            votes = Counter(int(istate[m, kev.IS_DETECTED]) for m in matched)
            best = max(votes.values())
            det = next(int(istate[m, kev.IS_DETECTED]) for m in matched if votes[int(istate[m, kev.IS_DETECTED])] == best)
            first = next(m for m in matched if int(istate[m, kev.IS_DETECTED]) == det)
            sc = scores[first]
            modules_matched = best
        elif code == kev.NO_MATCH:
            sc = dict(scores[0], outcome="no_match", detected=None, rotation_error_deg=None)
        else:  # a time-out: the most likely hypothesis of the module with the highest evidence
            best_m = int(np.argmax(st.fstate[:, kev.FS_MLH_EV]))
            sc = dict(scores[best_m], outcome="time_out", detected=None)
        n_hyp = sum(live_hypotheses(istate[m]) for m in range(model.n_modules))
        rec = EvidenceEpisode(epoch=epoch, episode=episode, object=target_name,
                              rotation=np.asarray(ds.episode_rotation[e], np.float32),
                              outcome=sc["outcome"], detected=sc["detected"], mlh_object=sc["mlh_object"],
                              mlh_correct=sc["mlh_correct"], steps=int(istate[0, kev.IS_MATCHING_STEPS]),
                              rotation_error_deg=sc["rotation_error_deg"], symmetric=sc["symmetric"],
                              n_hypotheses=n_hyp, seconds=secs, detected_rotation=sc["detected_rotation"],
                              trace=trace)
        rec.modules_matched = modules_matched
        rec.module_outcomes = tuple(s["outcome"] for s in scores)
        return rec


def compile_voting_kernel(stepwise: bool = False) -> float:
    """Compile (or load) the voting episode kernel on two toy modules; seconds."""
    from engine.models.evidence.settings import EvidenceSettings

    t0 = time.perf_counter()
    settings = EvidenceSettings(n_modules=2)
    loc, pose, pfd, curv = toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    model = ModulesModel(settings, CURVATURE_FEATURES, 2, max_eval_steps=4)
    toy = toy_models(loc, pose, pfd, logk, settings.max_match_distance)
    for mod in model.modules:
        mod._model = toy
        mod._names = ("a", "b")
    obs = (loc[:4], pose[:4], pfd[:4], logk[:4])
    model.run_episode([obs, obs], stepwise=stepwise)
    return time.perf_counter() - t0
