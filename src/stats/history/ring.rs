//! A fixed-size ring of `Copy` samples: allocated once, the oldest overwritten when full.

/// A ring of `capacity` samples (at least one), oldest first when read.
///
/// The whole capacity is reserved at construction and never grown, but only written as samples
/// arrive: the memory counts against the process's resident size as the first hour fills, not at
/// start-up (idle RSS is a benchmark row).
#[derive(Debug, Clone)]
pub struct Ring<T> {
    buf: Vec<T>,
    capacity: usize,
    /// Where the next sample goes once the ring is full (until then, at the end).
    next: usize,
}

impl<T: Copy> Ring<T> {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buf: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.buf.len() < self.capacity {
            self.buf.push(v);
        } else {
            self.buf[self.next] = v;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The memory the samples take when full (reserved at construction).
    pub fn bytes(&self) -> usize {
        self.capacity * std::mem::size_of::<T>()
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = T> + ExactSizeIterator + '_ {
        self.iter_from(0)
    }

    /// The samples after the `skip` oldest, oldest first (a picture of the last minutes reads only
    /// those, not the whole hour).
    pub fn iter_from(
        &self,
        skip: usize,
    ) -> impl DoubleEndedIterator<Item = T> + ExactSizeIterator + '_ {
        let len = self.buf.len();
        // Before the ring is full the oldest is at 0; after, it is where the next one goes.
        let start = if len < self.capacity { 0 } else { self.next };
        (skip.min(len)..len).map(move |i| self.buf[(start + i) % len])
    }

    /// The newest sample.
    pub fn last(&self) -> Option<T> {
        self.iter().next_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_around_keeping_the_newest_in_order() {
        let mut r = Ring::<u32>::new(3);
        assert!(r.is_empty());
        assert_eq!(r.last(), None);
        r.push(1);
        r.push(2);
        assert_eq!(r.iter().collect::<Vec<_>>(), [1, 2]);
        r.push(3);
        r.push(4);
        r.push(5);
        assert_eq!(r.iter().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!((r.len(), r.capacity(), r.last()), (3, 3, Some(5)));
        for v in 6..1000 {
            r.push(v);
        }
        assert_eq!(r.iter().collect::<Vec<_>>(), [997, 998, 999]);
        assert_eq!(r.iter().rev().collect::<Vec<_>>(), [999, 998, 997]);
        assert_eq!(r.iter_from(1).collect::<Vec<_>>(), [998, 999]);
        assert_eq!(r.iter_from(7).count(), 0);
    }

    #[test]
    fn its_memory_is_fixed_at_construction() {
        let mut r = Ring::<u64>::new(3600);
        assert_eq!(r.bytes(), 3600 * 8);
        assert_eq!(r.buf.capacity(), 3600);
        for v in 0..10_000 {
            r.push(v);
        }
        assert_eq!((r.bytes(), r.len()), (3600 * 8, 3600));
        assert_eq!(r.buf.capacity(), 3600, "reserved once, never grown");
        // A zero capacity is one sample, not a division by zero.
        let mut z = Ring::<u8>::new(0);
        z.push(7);
        z.push(8);
        assert_eq!(z.iter().collect::<Vec<_>>(), [8]);
    }
}
