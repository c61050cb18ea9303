"""Times scikit-learn's permutation_test_score on the M3 cell written by the Rust bench, with the
same LDA (class-pooled Ledoit-Wolf covariance, lsqr) and the same GroupKFold-by-question folds,
labels permuted within question (groups). Prints seconds per permutation and the ratio."""
import json
import os
import sys
import tempfile
import time

import warnings

import numpy as np
from threadpoolctl import threadpool_limits
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.covariance import ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import PredefinedSplit, permutation_test_score

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "oracle"))
from check_sklearn import FixedCovariance  # noqa: E402  (same estimator as the oracle test)


class PooledLedoitWolfLDA(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        classes = np.unique(y)
        means = np.stack([X[y == c].mean(0) for c in classes])
        cov, _ = ledoit_wolf(X - means[np.searchsorted(classes, y)])
        self.lda_ = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=FixedCovariance(cov)).fit(X, y)
        self.classes_ = self.lda_.classes_
        return self

    def predict(self, X):
        return self.lda_.predict(X)


d = os.environ.get("PG_BENCH_DIR", os.path.join(tempfile.gettempdir(), "pg-bench"))
c = json.load(open(os.path.join(d, "m3_cell.json")))
X = np.array(c["x"]).reshape(-1, c["k"])
y = np.array(c["labels"])
groups = np.array(c["groups"])
cv = PredefinedSplit(np.array(c["folds"]))
n = int(os.environ.get("PG_BENCH_SKLEARN_PERMS", "20"))
warnings.filterwarnings("ignore", message="The groups parameter is ignored by PredefinedSplit")
with threadpool_limits(1):  # the Rust side runs one M3 cell on one thread
    t = time.perf_counter()
    # groups= makes permutation_test_score shuffle labels within each question.
    score, perm_scores, p = permutation_test_score(PooledLedoitWolfLDA(), X, y, groups=groups, cv=cv, n_permutations=n, random_state=0, n_jobs=1)
    dt = time.perf_counter() - t
per = dt / (n + 1)
rust = c["rust_seconds_per_permutation"]
print(f"sklearn permutation_test_score: {n} permutations + 1 fit in {dt:.2f} s = {1e3 * per:.1f} ms/permutation (accuracy {score:.4f}; Rust {c['rust_accuracy']:.4f})")
print(f"M3 label-permutation speed-up over scikit-learn (same data, folds, LDA; single-threaded both): {per / rust:.0f}x (goal >= 100x)")
