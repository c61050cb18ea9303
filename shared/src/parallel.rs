//! Work splitting: threads natively, a plain loop on wasm32 (the browser splits work across
//! Web Workers at a higher level, by permutation ranges).

/// Maps `f` over `0..n` and returns results in index order, whatever the thread count.
pub fn par_map<R: Send, F: Fn(usize) -> R + Sync>(n: usize, f: F) -> Vec<R> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism()
            .map(|t| t.get())
            .unwrap_or(1)
            .min(n.max(1));
        if threads > 1 {
            use std::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::Mutex;
            let next = AtomicUsize::new(0);
            let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let r = f(i);
                        *slots[i].lock().expect("no poisoned slot") = Some(r);
                    });
                }
            });
            return slots
                .into_iter()
                .map(|m| {
                    m.into_inner()
                        .expect("no poisoned slot")
                        .expect("every index ran")
                })
                .collect();
        }
    }
    (0..n).map(f).collect()
}
