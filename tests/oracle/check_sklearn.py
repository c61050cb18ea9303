"""Independent oracles for the statistics in `shared`: scikit-learn and statsmodels.

Reads the cases written by `cargo test -p shared --test oracle_dump` from $PG_ORACLE_DIR and
asserts agreement. Exit code 0 only if every comparison holds; prints 'N passed, N failed'.
"""
import json
import os
import sys
import tempfile

import numpy as np
from sklearn.covariance import ledoit_wolf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from statsmodels.stats.multitest import multipletests

d = os.environ.get("PG_ORACLE_DIR", os.path.join(tempfile.gettempdir(), "pg-oracle"))
COUNTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    if ok:
        COUNTS["passed"] += 1
    else:
        COUNTS["failed"] += 1
        print(f"FAIL {name}: {detail}")


class FixedCovariance:
    """covariance_estimator for sklearn's LDA that returns a precomputed matrix: sklearn sums
    priors_k * covariance over classes, and the priors sum to 1, so LDA uses exactly it."""

    def __init__(self, cov=None):
        self.cov = cov

    def get_params(self, deep=True):
        return {"cov": self.cov}

    def set_params(self, **p):
        self.cov = p["cov"]
        return self

    def fit(self, X, y=None):
        self.covariance_ = self.cov
        return self


def sklearn_lda_heldout(x, labels, folds):
    n = len(labels)
    logp = np.zeros(n)
    correct = np.zeros(n, dtype=bool)
    shrink = []
    for f in range(5):
        tr = folds != f
        te = folds == f
        xt, yt = x[tr], labels[tr]
        classes = np.unique(yt)
        means = np.stack([xt[yt == c].mean(0) for c in classes])
        resid = xt - means[np.searchsorted(classes, yt)]
        cov, s = ledoit_wolf(resid)
        shrink.append(s)
        lda = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=FixedCovariance(cov))
        lda.fit(xt, yt)
        lp = lda.predict_log_proba(x[te])
        pred = lda.predict(x[te])
        idx = np.searchsorted(lda.classes_, labels[te])
        logp[te] = lp[np.arange(te.sum()), idx]
        correct[te] = pred == labels[te]
    return correct.mean(), logp, np.array(shrink)


def logsumexp_rows(z):
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def full_newton_logistic(x, y, c, lam=1.0):
    """Minimises sum_i [lse(W x_i + b) - (W x_i + b)_y] + lam/2 |W|^2 by Newton's method with the
    full Hessian (the last class's intercept fixed at 0: the softmax ignores a common shift).
    Returns a function giving the decision scores of new rows."""
    n, k = x.shape
    xt = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros((c, k + 1))
    reg = np.full(k + 1, lam)
    reg[-1] = 0.0
    free = np.ones((c, k + 1), dtype=bool)
    free[-1, -1] = False

    def value(t):
        z = xt @ t.T
        return (logsumexp_rows(z)[:, 0] - z[np.arange(n), y]).sum() + 0.5 * lam * (t[:, :k] ** 2).sum()

    for _ in range(200):
        z = xt @ theta.T
        p = np.exp(z - logsumexp_rows(z))
        r = p.copy()
        r[np.arange(n), y] -= 1.0
        g = r.T @ xt + theta * reg
        h = np.zeros((c, k + 1, c, k + 1))
        for a in range(c):
            for b in range(c):
                w = p[:, a] * ((a == b) - p[:, b])
                h[a, :, b, :] = (xt * w[:, None]).T @ xt
            h[a, :, a, :] += np.diag(reg)
        hf = h.reshape(c * (k + 1), c * (k + 1))[free.ravel()][:, free.ravel()]
        gf = g.ravel()[free.ravel()]
        if np.abs(gf).max() < 1e-11 * n:
            break
        step = np.zeros(c * (k + 1))
        step[free.ravel()] = np.linalg.solve(hf, -gf)
        step = step.reshape(c, k + 1)
        f0, t = value(theta), 1.0
        while value(theta + t * step) > f0 + 1e-4 * t * (g * step).sum() and t > 1e-10:
            t *= 0.5
        theta = theta + t * step
    return lambda xn: np.hstack([xn, np.ones((len(xn), 1))]) @ theta.T


def main():
    cases = json.load(open(os.path.join(d, "lda_cases.json")))
    for i, c in enumerate(cases):
        k = c["k"]
        x = np.array(c["x"], dtype=np.float64).reshape(-1, k)
        labels = np.array(c["labels"])
        folds = np.array(c["folds"])
        for tag, lab, acc, lp in [("observed", labels, c["accuracy"], c["log_posterior"]), ("permuted", np.array(c["perm_labels"]), c["perm_accuracy"], c["perm_log_posterior"])]:
            sacc, slp, sshr = sklearn_lda_heldout(x, lab, folds)
            check(f"lda case {i} {tag} accuracy", abs(sacc - acc) < 1e-12, f"{sacc} vs {acc}")
            err = np.max(np.abs(slp - np.array(lp)) / (1 + np.abs(slp)))
            check(f"lda case {i} {tag} log posterior", err < 1e-9, f"max rel err {err}")
            if tag == "observed":
                check(f"lda case {i} shrinkage", np.allclose(sshr, c["shrinkage"], rtol=1e-9, atol=1e-12), f"{sshr} vs {c['shrinkage']}")

    # M3's estimator: scikit-learn's own shrinkage='auto' LDA on the same samples and folds.
    for i, c in enumerate(json.load(open(os.path.join(d, "per_class_lda_cases.json")))):
        k = c["k"]
        x = np.array(c["x"], dtype=np.float64).reshape(-1, k)
        labels = np.array(c["labels"])
        folds = np.array(c["folds"])
        logp = np.zeros(len(labels))
        correct = np.zeros(len(labels), dtype=bool)
        for f in range(5):
            tr, te = folds != f, folds == f
            lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[tr], labels[tr])
            lp = lda.predict_log_proba(x[te])
            idx = np.searchsorted(lda.classes_, labels[te])
            logp[te] = lp[np.arange(te.sum()), idx]
            correct[te] = lda.predict(x[te]) == labels[te]
        name = f"per-class LDA case {i} ({c['tag']})"
        check(f"{name} accuracy", correct.mean() == c["accuracy"], f"{correct.mean()} vs {c['accuracy']}")
        err = np.max(np.abs(logp - np.array(c["log_posterior"])))
        check(f"{name} log posterior (abs 1e-6)", err < 1e-6, f"max abs err {err}")

    # The logistic probe: its objective's optimum, two independent ways. (1) scikit-learn's
    # LogisticRegression(C=1) (newton-cg, tol 1e-12; same objective as the default lbfgs) where it
    # converges (case 0); (2) a full-Hessian Newton solve written here, to machine precision,
    # on every case (on the near-separable case 1 scikit-learn stops at gradient ~1e-6 with a
    # failed line search, 1e-4 away in log posterior).
    for i, c in enumerate(json.load(open(os.path.join(d, "logistic_cases.json")))):
        k = c["k"]
        x = np.array(c["x"], dtype=np.float64).reshape(-1, k)
        labels = np.array(c["labels"])
        folds = np.array(c["folds"])
        name = f"logistic probe case {i} ({c['tag']})"
        for oracle in (["sklearn", "newton"] if i == 0 else ["newton"]):
            logp = np.zeros(len(labels))
            correct = np.zeros(len(labels), dtype=bool)
            for f in range(5):
                tr, te = folds != f, folds == f
                if oracle == "sklearn":
                    clf = LogisticRegression(C=1.0, solver="newton-cg", tol=1e-12, max_iter=10000).fit(x[tr], labels[tr])
                    lp = clf.predict_log_proba(x[te])
                    idx = np.searchsorted(clf.classes_, labels[te])
                    logp[te] = lp[np.arange(te.sum()), idx]
                    correct[te] = clf.predict(x[te]) == labels[te]
                else:
                    classes = np.unique(labels[tr])
                    z = full_newton_logistic(x[tr], np.searchsorted(classes, labels[tr]), len(classes))(x[te])
                    lp = z - logsumexp_rows(z)
                    idx = np.searchsorted(classes, labels[te])
                    logp[te] = lp[np.arange(te.sum()), idx]
                    correct[te] = classes[np.argmax(z, axis=1)] == labels[te]
            check(f"{name} accuracy vs {oracle}", correct.mean() == c["accuracy"], f"{correct.mean()} vs {c['accuracy']}")
            err = np.max(np.abs(logp - np.array(c["log_posterior"])))
            check(f"{name} log posterior vs {oracle} (abs 1e-6)", err < 1e-6, f"max abs err {err}")

    for i, c in enumerate(json.load(open(os.path.join(d, "corrections.json")))):
        p = np.array(c["p"])
        bh = multipletests(p, method="fdr_bh")[1]
        holm = multipletests(p, method="holm")[1]
        check(f"BH case {i}", np.allclose(bh, c["bh"], rtol=0, atol=1e-12), f"{bh} vs {c['bh']}")
        check(f"Holm case {i}", np.allclose(holm, c["holm"], rtol=0, atol=1e-12), f"{holm} vs {c['holm']}")

    print(f"oracle: {COUNTS['passed']} passed, {COUNTS['failed']} failed")
    sys.exit(1 if COUNTS["failed"] else 0)


if __name__ == "__main__":
    main()
