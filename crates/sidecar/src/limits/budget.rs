//! The buffer budget at run time: a byte budget shared by every
//! connection. A buffer is taken from it ([`BufferBudget::try_take`]) and
//! given back when its [`Lease`] drops.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::Budget;

/// A byte budget shared by every connection's buffers, lock-free.
///
/// [`BufferBudget::try_take`] reserves bytes and returns a [`Lease`] that
/// gives them back when it drops; it refuses (and counts the refusal) when
/// the bytes would take `used` past `capacity`. `used` never exceeds
/// `capacity`, whatever the interleaving.
#[derive(Debug)]
pub struct BufferBudget {
    capacity: usize,
    used: AtomicUsize,
    refusals: AtomicU64,
}

impl BufferBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> BufferBudget {
        BufferBudget {
            capacity,
            used: AtomicUsize::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// A budget that never refuses (no memory limit known); it still counts
    /// the bytes in use.
    pub fn unbounded() -> BufferBudget {
        BufferBudget::new(usize::MAX)
    }

    /// The budget a [`Budget`] sets.
    pub fn for_budget(budget: &Budget) -> BufferBudget {
        match budget.buffer_bytes {
            Some(b) => BufferBudget::new(usize::try_from(b).unwrap_or(usize::MAX)),
            None => BufferBudget::unbounded(),
        }
    }

    /// Reserves `bytes` if they fit; `None` (counted in
    /// [`BufferBudget::refusals`]) if they do not.
    pub fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Lease> {
        if self.reserve(bytes) {
            Some(Lease {
                budget: self.clone(),
                bytes,
            })
        } else {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Adds `bytes` to `used` unless that would pass `capacity`.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.capacity)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held by live leases.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes that can be held at once (`usize::MAX`: unbounded).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether this budget never refuses.
    pub fn is_unbounded(&self) -> bool {
        self.capacity == usize::MAX
    }

    /// How many takes (and grows) were refused.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// Bytes held from a [`BufferBudget`]; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Lease {
    /// The bytes this lease holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes besides, if they fit; on refusal the lease keeps
    /// what it had and the refusal is counted.
    pub fn try_grow(&mut self, more: usize) -> bool {
        if self.budget.reserve(more) {
            self.bytes += more;
            true
        } else {
            self.budget.refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Gives back all but `bytes` (a buffer that shrank); no-op if the lease
    /// holds no more than that.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_take_and_give_back() {
        let b = Arc::new(BufferBudget::new(100));
        let l1 = b.try_take(60).unwrap();
        assert_eq!((b.used(), b.capacity()), (60, 100));
        assert!(b.try_take(41).is_none());
        assert_eq!(b.refusals(), 1);
        let mut l2 = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(b.try_take(1).is_none());
        assert!(b.try_take(0).is_some(), "nothing always fits");
        drop(l1);
        assert_eq!(b.used(), 40);
        assert!(l2.try_grow(60));
        assert_eq!((l2.bytes(), b.used()), (100, 100));
        assert!(!l2.try_grow(1));
        assert_eq!((l2.bytes(), b.used(), b.refusals()), (100, 100, 3));
        l2.shrink_to(30);
        assert_eq!((l2.bytes(), b.used()), (30, 30));
        l2.shrink_to(50);
        assert_eq!((l2.bytes(), b.used()), (30, 30));
        drop(l2);
        assert_eq!(b.used(), 0);
        assert!(b.try_take(usize::MAX).is_none(), "no overflow");
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn unbounded_counts_without_refusing() {
        let b = Arc::new(BufferBudget::unbounded());
        let l = b.try_take(1 << 40).unwrap();
        assert_eq!(b.used(), 1 << 40);
        assert!(b.try_take(usize::MAX).is_none(), "the sum still cannot overflow");
        drop(l);
        assert_eq!(b.used(), 0);
        assert!(b.is_unbounded());
    }

    #[test]
    fn concurrent_leases_never_pass_the_capacity() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 20_000;
        let b = Arc::new(BufferBudget::new(1000));
        let granted = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let b = b.clone();
                let granted = granted.clone();
                std::thread::spawn(move || {
                    let mut held: Vec<Lease> = Vec::new();
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    for _ in 0..ROUNDS {
                        if rng.bool() || held.len() > 4 {
                            if !held.is_empty() {
                                held.swap_remove(rng.usize(..held.len()));
                            }
                        } else if let Some(mut l) = b.try_take(rng.usize(1..300)) {
                            granted.fetch_add(1, Ordering::Relaxed);
                            if rng.bool() {
                                l.try_grow(rng.usize(1..200));
                            }
                            held.push(l);
                        }
                        let used = b.used();
                        assert!(used <= b.capacity(), "used {used}");
                    }
                    held.iter().map(Lease::bytes).sum::<usize>()
                })
            })
            .collect();
        let still_held: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // Every thread dropped its leases on return.
        assert_eq!(b.used(), 0, "{still_held} bytes were held at the end");
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert!(b.refusals() > 0, "the capacity was reached");
    }

    proptest::proptest! {
        #[test]
        fn any_sequence_keeps_used_equal_to_the_live_leases(
            capacity in 0usize..10_000,
            ops in proptest::collection::vec((0u8..4, 0usize..4_000), 0..200),
        ) {
            let b = Arc::new(BufferBudget::new(capacity));
            let mut held: Vec<Lease> = Vec::new();
            let mut refusals = 0;
            for (op, n) in ops {
                match op {
                    0 => match b.try_take(n) {
                        Some(l) => held.push(l),
                        None => refusals += 1,
                    },
                    1 if !held.is_empty() => {
                        held.swap_remove(n % held.len());
                    }
                    2 if !held.is_empty() => {
                        let i = n % held.len();
                        if !held[i].try_grow(n) {
                            refusals += 1;
                        }
                    }
                    3 if !held.is_empty() => {
                        let i = n % held.len();
                        held[i].shrink_to(n / 2);
                    }
                    _ => {}
                }
                let live: usize = held.iter().map(Lease::bytes).sum();
                proptest::prop_assert_eq!(b.used(), live);
                proptest::prop_assert!(b.used() <= capacity);
                proptest::prop_assert_eq!(b.refusals(), refusals);
            }
            drop(held);
            proptest::prop_assert_eq!(b.used(), 0);
        }
    }
}
