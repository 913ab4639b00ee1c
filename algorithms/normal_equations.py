"""The exact least-squares solve as an engine program: tree-summed moments, normal equations on the root."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from drizzle_ml.program import Partition, Program

from .moments import combine_moments, partition_moments

# The Gram matrix squares X's condition number, and its rounding noise is about
# eps * ||X||²: eigenvalues below this fraction of the largest are that noise
# (X's singular values below 1e-6 of its largest), so they count as zero.
GRAM_RCOND = 1e-12


class NormalEquations(Program):
    """One pass: weighted moments of ``[X, Y]``, then ``(Sxx + alpha I) coef = Sxy`` on the root.

    Model: ``coef`` (n_targets, n_features), ``intercept`` (n_targets,).
    With ``alpha == 0`` the minimum-norm least-squares solution is taken, as
    ``scipy.linalg.lstsq`` (and scikit-learn's LinearRegression) do; directions
    of X with singular values below 1e-6 of the largest count as collinear.
    """

    shared = ()  # nothing flows down: the job is a single iteration

    def __init__(self, n_features: int, alpha: float = 0.0, fit_intercept: bool = True):
        self.n_features, self.alpha, self.fit_intercept = n_features, float(alpha), fit_intercept

    def local(self, model, part: Partition):
        Y = part.y.reshape(part.n_rows, -1)
        XY = sp.hstack([part.X, sp.csr_matrix(Y)], format="csr") if sp.issparse(part.X) else np.hstack([part.X, Y])
        return partition_moments(XY, part.sample_weight)

    def combine(self, a, b):
        return combine_moments(a, b)

    def update(self, model, total, iteration):
        weight, mean, scatter = (np.array(t) for t in total)
        d = self.n_features
        if not self.fit_intercept:  # uncentered second moments
            scatter = scatter + weight[0] * np.outer(mean, mean)
        sxx, sxy = scatter[:d, :d], scatter[:d, d:]
        if self.alpha > 0:
            sxx = sxx + self.alpha * np.eye(d)
            try:
                beta = scipy.linalg.solve(sxx, sxy, assume_a="pos")
            except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
                beta = scipy.linalg.lstsq(sxx, sxy, cond=GRAM_RCOND)[0]
        else:
            beta = scipy.linalg.lstsq(sxx, sxy, cond=GRAM_RCOND)[0]
        coef = beta.T
        intercept = mean[d:] - coef @ mean[:d] if self.fit_intercept else np.zeros(coef.shape[0])
        return {"coef": coef, "intercept": intercept}, {"converged": True}
