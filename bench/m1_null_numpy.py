"""Peer for the exact M1/M2 null: the same paired question-level swap permutation of one
(method, layer, base -> em) cell done the direct way in numpy at full width (centroids of every
draw = (swap matrix) @ activations, then the cosines), on the bundle exported by the Rust bench.
Prints seconds per 1,000 draws, so that bench/analyze_full_size.sh can report the ratio.
Usage: m1_null_numpy.py EXPORT.npz METHOD LAYER N"""
import sys
import time

import numpy as np

path, method, layer, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
z = np.load(path)
x0 = z[f"base/{method}/L{layer}/per_question"].astype(np.float64)  # P x Q x H
x1 = z[f"em/{method}/L{layer}/per_question"].astype(np.float64)
p, q, h = x0.shape
d = x1 - x0  # P x Q x H
c0, c1 = x0.mean(axis=1), x1.mean(axis=1)
rng = np.random.default_rng(0)
iu = np.triu_indices(p, 1)


def m1(c):
    u = c / np.linalg.norm(c, axis=1, keepdims=True)
    return (u @ u.T)[iu].mean()


t = time.perf_counter()
batch = 256
null = []
for start in range(0, n, batch):
    s = (rng.random((min(batch, n - start), q)) < 0.5).astype(np.float64)  # B x Q
    shift = np.einsum("bq,pqh->bph", s, d) / q  # B x P x H
    for b in range(s.shape[0]):
        null.append(m1(c1 - shift[b]) - m1(c0 + shift[b]))
dt = time.perf_counter() - t
print(f"numpy direct null: {n} draws in {dt:.2f} s = {1000 * dt / n:.3f} s per 1,000 draws")
