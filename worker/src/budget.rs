//! Budgets shared by the threads that read images: of memory (an image is decoded only when
//! what it will hold fits beside the images already decoding, so that a worker's memory
//! follows the budget, not the number of threads or the size files claim), and of cores (as
//! many images decode at once as there are cores, however many are being fetched).

use std::sync::{Condvar, Mutex};

/// Units (bytes, or cores) that threads take and give back.
#[derive(Debug)]
pub struct Budget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Units held until dropped.
#[derive(Debug)]
pub struct Held<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    /// A budget of `total` units (at least one).
    pub fn new(total: u64) -> Self {
        Self {
            total: total.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` units fit, and holds them. A claim larger than the whole budget
    /// waits until nothing else is held, and then holds all of it: such an image is decoded
    /// alone.
    pub fn hold(&self, bytes: u64) -> Held<'_> {
        let bytes = bytes.clamp(1, self.total);
        let mut used = self.lock();
        while *used + bytes > self.total {
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += bytes;
        Held {
            budget: self,
            bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // A count stays consistent whatever panicked while holding it.
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.budget.lock() -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn what_is_held_at_once_never_exceeds_the_budget() {
        let budget = Budget::new(100);
        let held = AtomicU64::new(0);
        let most = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for i in 0..8u64 {
                let (budget, held, most) = (&budget, &held, &most);
                scope.spawn(move || {
                    for round in 0..50u64 {
                        // 10 to 150 bytes: some claims exceed the budget and are held alone.
                        let bytes = 10 + (i * 37 + round * 11) % 141;
                        let _held = budget.hold(bytes);
                        let now = held.fetch_add(bytes.min(100), Ordering::SeqCst) + bytes.min(100);
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        held.fetch_sub(bytes.min(100), Ordering::SeqCst);
                    }
                });
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 100, "{most} bytes held at once");
        assert_eq!(*budget.lock(), 0, "everything given back");
    }
}
