"""Smooth minimization as an engine program: gradient descent and L-BFGS with an in-DAG line search.

Every iteration evaluates the objective and its gradient at the current
*proposal* ``w`` (the only model key that flows down the tree). The update on
the tree root then either accepts the proposal (sufficient decrease, Armijo)
and proposes the next point along a new direction, or backtracks along the
same direction. A line-search step is therefore just another iteration of the
static group DAG: it costs no extra coordination with the driver.

Model keys
    ``w`` (n_params,): the proposal being evaluated (shared).
    ``x`` (n_params,): the last accepted point, the answer; ``g``: its gradient;
    ``p``: the search direction; ``S``, ``Y`` (memory, n_params): L-BFGS pairs;
    ``state``: [f(x), step, g·p, pairs stored, newest slot, accepted?, line-search failures,
    loss due?].

A fixed-step gradient descent needs the loss only to report it, so it asks
the workers for it every ``LOSS_EVERY``-th iteration (the flag travels down
the tree with ``w``) and reports the newest one it has; the line searches
need it at every iteration.
"""

from __future__ import annotations

import math

import numpy as np

from drizzle_ml.program import Partition, Program

from .losses import LinearLoss

SOLVERS = ("lbfgs", "gd")

_F, _STEP, _GTP, _NMEM, _HEAD, _HAVE_X, _LS_FAILED, _LOSS_DUE = range(8)
#: A fixed-step gradient descent evaluates (and reports) the loss at iterations
#: 0, 9, 19, 29, ...: a tenth of them, sparing a ``log`` per row elsewhere.
LOSS_EVERY = 10
_ARMIJO_C1 = 1e-4
_FTOL = 64 * np.finfo(float).eps  # relative decrease below which L-BFGS stops, as scikit-learn


def initial_model(n_params: int, solver: str, memory: int, w0: np.ndarray | None = None) -> dict:
    """The model a :class:`Minimize` job starts from (at ``w0``, default zeros)."""
    w = np.zeros(n_params) if w0 is None else np.array(w0, dtype=np.float64)
    rows = memory if solver == "lbfgs" else 0
    return {
        "w": w,
        "x": w.copy(),
        "g": np.zeros(n_params),
        "p": np.zeros(n_params),
        "S": np.zeros((rows, n_params)),
        "Y": np.zeros((rows, n_params)),
        "state": _initial_state(),
    }


def _initial_state() -> np.ndarray:
    state = np.zeros(8)
    state[_LOSS_DUE] = 1.0
    return state


def line_search_failed(model: dict) -> bool:
    """Whether a finished :class:`Minimize` job stopped because no step lowered the loss."""
    return bool(model["state"][_LS_FAILED])


class Minimize(Program):
    """Minimize ``(loss_sum(w) + alpha/2 ||coef||²) / weight_sum`` of a :class:`LinearLoss`.

    solver : {"lbfgs", "gd"}
        L-BFGS with ``memory`` pairs, or steepest descent.
    alpha : float
        L2 penalty on the coefficients (not the intercepts); 0 for none.
    tol : float
        Stop when the largest absolute gradient entry is at most ``tol`` (or,
        for L-BFGS, when the relative decrease of f falls below 64 eps).
    learning_rate : float or None
        For ``gd``: a fixed step; None backtracks (Armijo) from a step that
        doubles after each accepted one. With a fixed step the loss is
        evaluated every ``LOSS_EVERY``-th iteration only; the metric ``loss``
        is the newest evaluated (as a line search reports the loss at the
        last accepted point).
    """

    def __init__(self, loss: LinearLoss, solver: str = "lbfgs", alpha: float = 0.0, tol: float = 1e-4,
                 learning_rate: float | None = None, memory: int = 10, classes: np.ndarray | None = None):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.loss, self.solver, self.alpha, self.tol = loss, solver, float(alpha), float(tol)
        self.learning_rate, self.memory = learning_rate, int(memory)
        self.penalty = self.alpha * loss.penalty_mask()
        self.classes = None if classes is None else np.asarray(classes)
        self.fixed_step = solver == "gd" and learning_rate is not None
        # Only w flows down the tree, and the loss-due flag when it can be off.
        self.shared = ("w", "state") if self.fixed_step else ("w",)

    # A wide model's vectors may be sharded across the workers: update then
    # sees its coordinates of them, and every sum over all coordinates goes
    # through self.coordinates (see drizzle_ml.program.Coordinates).
    sharded = ("w", "x", "g", "p", "S", "Y")
    sharded_partial = 0  # the partial is (gradient sum, [loss sum, weight sum])

    def local(self, model, part: Partition):
        with_loss = not self.fixed_step or bool(model["state"][_LOSS_DUE])
        return self.loss.evaluate(model["w"], part.X, self._targets(part), part.sample_weight, with_loss=with_loss)

    def touched_coordinates(self, part: Partition) -> np.ndarray | None:
        """The coordinates this partition's gradient can touch (sparse rows), for sparse exchanges."""
        key = ("touched", self.loss.n_features, self.loss.n_outputs, self.loss.fit_intercept)
        if key not in part.cache:
            part.cache[key] = self.loss.touched(part.X)
        return part.cache[key]

    def _targets(self, part: Partition) -> np.ndarray:
        """The partition's labels as the loss wants them, encoded once per partition.

        With ``classes`` set (data read by the workers themselves), raw labels
        become 0/1 (binomial) or class codes (multinomial); otherwise the
        driver has encoded them already.
        """
        if self.classes is None:
            return part.y
        key = ("labels", self.loss.kind, self.classes.tobytes())
        codes = part.cache.get(key)
        if codes is None:
            codes = np.searchsorted(self.classes, part.y)
            known = (codes < len(self.classes)) & (self.classes[np.minimum(codes, len(self.classes) - 1)] == part.y)
            if not known.all():
                bad = part.y[~known][0]
                raise ValueError(f"label {bad!r} at row {part.row_offset + int(np.argmin(known))} "
                                 f"is not one of the classes {self.classes.tolist()}")
            if self.loss.kind == "binomial":
                dtype = part.X.dtype if part.X.dtype in (np.float32, np.float64) else np.float64
                codes = (codes == 1).astype(dtype)
            part.cache[key] = codes
        return codes

    def objective(self, w: np.ndarray, total, with_loss: bool = True) -> tuple[float, np.ndarray]:
        """``(f, gradient)`` at ``w`` from the summed partials; f is NaN without ``with_loss``."""
        grad_sum, stats = total
        weight = float(stats[1])
        pw = self.coordinates.shard(self.penalty) * w
        g = grad_sum + pw
        g /= weight
        if not with_loss:
            return math.nan, g
        penalty = self.coordinates.dot(pw, w)
        return (float(stats[0]) + 0.5 * penalty) / weight, g

    def update(self, model, total, iteration):
        w = model["w"]
        state = model["state"].copy()
        loss_known = bool(state[_LOSS_DUE]) or not self.fixed_step
        f, g = self.objective(w, total, loss_known)
        if state[_HAVE_X] and self.learning_rate is None:
            f0, step, gtp = state[_F], state[_STEP], state[_GTP]
            if not (np.isfinite(f) and f <= f0 + _ARMIJO_C1 * step * gtp):
                return self._backtrack(model, state, f, iteration)
        # The largest |g_i| is NaN or inf exactly when the gradient is not finite.
        grad_max = self.coordinates.max_abs(g)
        if not (state[_HAVE_X] and self.learning_rate is None) and (
                (loss_known and not math.isfinite(f)) or not math.isfinite(grad_max)):
            what = f"the loss is {f}" if loss_known and not math.isfinite(f) else "the gradient is not finite"
            raise FloatingPointError(
                f"{what} at iteration {iteration}: lower learning_rate or scale the features"
            )
        # Accept w.
        new = dict(model)
        converged = False
        if state[_HAVE_X] and self.solver == "lbfgs":
            decrease = (state[_F] - f) / max(abs(state[_F]), abs(f), 1.0)
            converged = 0 <= decrease <= _FTOL
            self._remember(new, state, w - model["x"], g - model["g"])
        converged = converged or grad_max <= self.tol
        new["x"], new["g"] = w, g
        if loss_known:
            state[_F] = f
        state[_HAVE_X] = 1.0
        if self.fixed_step:
            state[_LOSS_DUE] = float((iteration + 2) % LOSS_EVERY == 0)
        if self.solver == "lbfgs":
            p = self._two_loop(g, new["S"], new["Y"], state)
        else:
            p = -g
        if self.fixed_step:
            gtp = math.nan  # the slope serves only a line search, and a fixed step has none
        else:
            gtp = self.coordinates.dot(g, p)
            if not gtp < 0:  # not a descent direction: forget the curvature pairs
                state[_NMEM] = 0
                p = -g
                gtp = self.coordinates.dot(g, p)
        if self.learning_rate is not None:
            step = self.learning_rate
        elif self.solver == "gd":
            step = 2.0 * state[_STEP] if state[_STEP] > 0 else 1.0
        elif state[_NMEM] == 0:
            step = min(1.0, 1.0 / max(np.sqrt(-gtp), 1e-300))  # first step: unit length
        else:
            step = 1.0
        state[_STEP], state[_GTP] = step, gtp
        new["p"], new["w"], new["state"] = p, w + step * p, state
        return new, {"loss": state[_F], "grad_max": grad_max, "step": step, "converged": converged}

    def _backtrack(self, model, state, f, iteration):
        f0, step, gtp = state[_F], state[_STEP], state[_GTP]
        # Safeguarded minimizer of the quadratic through f(0), f'(0) and f(step).
        curvature = f - f0 - gtp * step
        trial = -gtp * step * step / (2.0 * curvature) if np.isfinite(f) and curvature > 0 else 0.5 * step
        step = min(max(trial, 0.1 * step), 0.5 * step)
        x, p = model["x"], model["p"]
        new = dict(model)
        c = self.coordinates
        stuck = step * c.max_abs(p) <= 1e-16 * (1.0 + c.max_abs(x))
        state[_STEP] = step
        if stuck:  # no representable step decreases f: x is as good as it gets
            state[_LS_FAILED] += 1
        new["w"], new["state"] = (x if stuck else x + step * p), state
        return new, {"loss": state[_F], "grad_max": c.max_abs(model["g"]),
                     "step": step, "converged": bool(stuck)}

    def _dots(self, *pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Several dot products over all coordinates, summed across shards at once."""
        return self.coordinates.sums(np.array([float(a @ b) for a, b in pairs]))

    def _remember(self, new: dict, state: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        sy, yy = self._dots((s, y), (y, y))
        if not sy > 1e-10 * yy:  # skip pairs that would break positive definiteness
            return
        head = (int(state[_HEAD]) + 1) % self.memory if state[_NMEM] else 0
        S, Y = new["S"], new["Y"]
        if not (S.flags.writeable and Y.flags.writeable):
            S, Y = S.copy(), Y.copy()  # a version the engine may still read (see Program.update)
        S[head], Y[head] = s, y
        new["S"], new["Y"] = S, Y
        state[_HEAD], state[_NMEM] = head, min(state[_NMEM] + 1, self.memory)

    def _two_loop(self, g: np.ndarray, S: np.ndarray, Y: np.ndarray, state: np.ndarray) -> np.ndarray:
        n, head = int(state[_NMEM]), int(state[_HEAD])
        order = [(head - i) % self.memory for i in range(n)]  # newest first
        q = g.copy()
        alphas = []
        dot = self.coordinates.dot
        sy = self._dots(*((S[i], Y[i]) for i in order)) if n else ()
        for i, s_y in zip(order, sy):
            rho = 1.0 / s_y
            a = rho * dot(S[i], q)
            q -= a * Y[i]
            alphas.append((i, rho, a))
        if n:
            q *= sy[0] / dot(Y[head], Y[head])
        for i, rho, a in reversed(alphas):
            b = rho * dot(Y[i], q)
            q += (a - b) * S[i]
        return -q


class OrthantWise(Minimize):
    """OWL-QN (Andrew & Gao 2007): L-BFGS for ``Minimize``'s objective plus an L1 term.

    Minimizes ``(loss_sum(w) + alpha/2 ||coef||² + l1 ||coef||₁) / weight_sum``
    (intercepts unpenalized). Each accepted point ``x`` gets the
    *pseudo-gradient* ``pg`` (the gradient of the smooth part plus ``l1 sign(x)``,
    or at ``x_i = 0`` the one-sided derivative that decreases, else 0); the
    direction is the L-BFGS two-loop product of the smooth part's curvature
    pairs with ``-pg``, with every entry whose sign disagrees with ``-pg``
    zeroed; every line-search point is projected onto the orthant of ``x``
    (sign of ``x_i``, or of ``-pg_i`` where ``x_i = 0``): a coordinate that
    would cross zero stays at exactly zero. Steps are accepted on
    ``F(w) <= F(x) + c1 pg·(w - x)``, backtracking as :class:`Minimize` does,
    each trial one iteration.

    Same model keys and metrics as :class:`Minimize` (``grad_max`` is the
    largest absolute pseudo-gradient entry; ``loss`` is ``F``). The extra
    quantities (``pg``, the orthant) are recomputed from ``x`` and ``g`` when
    needed, so the model stays that of L-BFGS and every replica's ``update``
    is the same arithmetic on the same arrays.
    """

    def __init__(self, loss: LinearLoss, alpha: float = 0.0, l1: float = 0.0, tol: float = 1e-4,
                 memory: int = 10, classes: np.ndarray | None = None):
        super().__init__(loss, "lbfgs", alpha=alpha, tol=tol, memory=memory, classes=classes)
        self.l1 = float(l1) * loss.penalty_mask()

    def _l1(self, total) -> np.ndarray:
        """The L1 strengths of the per-sample objective (``l1 / weight_sum``), for this worker's coordinates."""
        return self.coordinates.shard(self.l1) / float(total[1][1])

    def update(self, model, total, iteration):
        w = model["w"]
        state = model["state"].copy()
        lam = self._l1(total)
        c = self.coordinates
        f, g = self.objective(w, total)
        f += c.dot(lam, np.abs(w))
        if state[_HAVE_X]:
            x = model["x"]
            pg_x = pseudo_gradient(x, model["g"], lam)
            if not (np.isfinite(f) and f <= state[_F] + _ARMIJO_C1 * c.dot(pg_x, w - x)):
                return self._backtrack_orthant(model, state, f, pg_x, lam)
        elif not (math.isfinite(f) and math.isfinite(c.max_abs(g))):
            what = f"the loss is {f}" if not math.isfinite(f) else "the gradient is not finite"
            raise FloatingPointError(f"{what} at iteration {iteration}: scale the features")
        pg = pseudo_gradient(w, g, lam)
        grad_max = c.max_abs(pg)
        new = dict(model)
        converged = False
        if state[_HAVE_X]:
            decrease = (state[_F] - f) / max(abs(state[_F]), abs(f), 1.0)
            converged = 0 <= decrease <= _FTOL
            self._remember(new, state, w - model["x"], g - model["g"])
        converged = converged or grad_max <= self.tol
        new["x"], new["g"] = w, g
        state[_F], state[_HAVE_X] = f, 1.0
        p = self._two_loop(pg, new["S"], new["Y"], state)
        p[(lam > 0) & (np.sign(p) != -np.sign(pg))] = 0.0  # stay in the orthant -pg points to
        gtp = c.dot(pg, p)
        if not gtp < 0:  # not a descent direction: forget the curvature pairs
            state[_NMEM] = 0
            p = -pg
            gtp = c.dot(pg, p)
        step = min(1.0, 1.0 / max(np.sqrt(-gtp), 1e-300)) if state[_NMEM] == 0 else 1.0
        state[_STEP], state[_GTP] = step, gtp
        new["p"], new["state"] = p, state
        new["w"] = project_orthant(w + step * p, orthant(w, pg), lam)
        return new, {"loss": f, "grad_max": grad_max, "step": step, "converged": converged}

    def _backtrack_orthant(self, model, state, f, pg_x, lam):
        """:meth:`Minimize._backtrack`'s shorter step, its trial point projected onto ``x``'s orthant."""
        new, metrics = self._backtrack(model, state, f, None)
        if not metrics["converged"]:
            x = model["x"]
            new["w"] = project_orthant(x + new["state"][_STEP] * model["p"], orthant(x, pg_x), lam)
        metrics["grad_max"] = self.coordinates.max_abs(pg_x)
        return new, metrics


def pseudo_gradient(x: np.ndarray, g: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The minimum-norm subgradient of ``f(x) + lam·|x|`` for the smooth part's gradient ``g``."""
    right, left = g + lam, g - lam  # the derivatives to the right and to the left of x_i = 0
    at_zero = np.where(right < 0, right, np.where(left > 0, left, 0.0))
    return np.where(x > 0, right, np.where(x < 0, left, at_zero))


def orthant(x: np.ndarray, pg: np.ndarray) -> np.ndarray:
    """The orthant a step from ``x`` explores: ``sign(x_i)``, or ``sign(-pg_i)`` where ``x_i = 0``."""
    return np.where(x != 0, np.sign(x), -np.sign(pg))


def project_orthant(w: np.ndarray, xi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``w`` with its penalized entries outside the orthant ``xi`` set to zero."""
    return np.where((lam > 0) & (np.sign(w) != xi), 0.0, w)
