//! Which examples each optimizer step trains on, decided before training starts so that a
//! resumed run takes exactly the same steps.
//!
//! As the Trainer: each epoch visits every example once, in file order (`shuffle = false`) or
//! in a seeded permutation (`shuffle = true`: Fisher–Yates from this project's stream keyed by
//! the seed and the epoch; torch's `RandomSampler` draws another order, so shuffled runs are not
//! example-for-example the Trainer's); consecutive examples form micro-batches (the last one of
//! an epoch may be smaller), and `grad_accum` consecutive micro-batches form an optimizer step
//! (the last step of an epoch may accumulate fewer).

/// `steps[s]` = the micro-batches of optimizer step s, each a list of example indices.
pub fn plan_steps(
    examples: usize,
    micro_batch: usize,
    grad_accum: usize,
    epochs: usize,
    shuffle: Option<u64>,
) -> Vec<Vec<Vec<usize>>> {
    let (micro_batch, grad_accum) = (micro_batch.max(1), grad_accum.max(1));
    let mut steps = Vec::new();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..examples).collect();
        if let Some(seed) = shuffle {
            let mut rng = shared::rng::Rng::stream(seed, "train/shuffle", epoch as u64);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        let micro: Vec<Vec<usize>> = order.chunks(micro_batch).map(|c| c.to_vec()).collect();
        for group in micro.chunks(grad_accum) {
            steps.push(group.to_vec());
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_plan_and_uneven_tails() {
        // The oracle: 40 examples, micro-batch 2, accumulation 4, 2 epochs = 10 steps of 8.
        let p = plan_steps(40, 2, 4, 2, None);
        assert_eq!(p.len(), 10);
        assert_eq!(p[0], vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]);
        assert_eq!(p[5][0], vec![0, 1]);
        // 11 examples, micro 4, accum 2: micro-batches of 4, 4, 3; steps of 2 then 1.
        let p = plan_steps(11, 4, 2, 1, None);
        assert_eq!(
            p,
            vec![
                vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]],
                vec![vec![8, 9, 10]]
            ]
        );
        // Shuffled: every epoch a permutation, different between epochs, same for a seed.
        let s = plan_steps(50, 4, 1, 2, Some(7));
        let epoch = |e: usize| -> Vec<usize> {
            s[e * 13..(e + 1) * 13]
                .iter()
                .flatten()
                .flatten()
                .copied()
                .collect()
        };
        let (mut a, b) = (epoch(0), epoch(1));
        assert_ne!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
        assert_eq!(s, plan_steps(50, 4, 1, 2, Some(7)));
        assert_ne!(s, plan_steps(50, 4, 1, 2, Some(8)));
    }
}
