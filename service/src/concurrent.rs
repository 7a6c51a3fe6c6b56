//! Bounded concurrency for blocking work (uploads, blob fetches): a few scoped threads take
//! items from one shared queue, and the first error stops them all.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `work` on every item of `items` on at most `threads` threads (at least one). Returns
/// the first error; once one is seen, no further item is started.
pub fn try_for_each<T: Send, E: Send>(
    items: impl Iterator<Item = T> + Send,
    threads: usize,
    work: impl Fn(T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let queue = Mutex::new(items);
    let failure: Mutex<Option<E>> = Mutex::new(None);
    let stopped = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while !stopped.load(Ordering::Relaxed) {
                    // The lock is held only to take the next item, never while working on it.
                    let next = queue.lock().expect("no panic holds the queue").next();
                    let Some(item) = next else { break };
                    if let Err(e) = work(item) {
                        stopped.store(true, Ordering::Relaxed);
                        failure
                            .lock()
                            .expect("no panic holds the failure")
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match failure.into_inner().expect("no panic holds the failure") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::try_for_each;

    #[test]
    fn every_item_is_worked_on_once() {
        let mut slots = vec![0u32; 100];
        try_for_each(slots.iter_mut().enumerate(), 4, |(i, slot)| {
            *slot += i as u32;
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(slots.iter().enumerate().all(|(i, &v)| v == i as u32));
    }

    #[test]
    fn the_first_error_stops_the_rest() {
        let started = AtomicUsize::new(0);
        let result = try_for_each(0..10_000, 2, |i| {
            started.fetch_add(1, Ordering::Relaxed);
            if i == 5 {
                Err(format!("item {i}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err("item 5".to_owned()));
        assert!(started.load(Ordering::Relaxed) < 10_000);
    }
}
