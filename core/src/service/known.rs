//! What a process remembers of the credentials it has read (runs, executors'
//! keys): the facts about one that never change once it is made, and whether
//! this process has seen it end. Ending is for ever (a revoked key or run is
//! never live again), so "ended" may be kept and answered from here; "live"
//! is only ever a reason to check in the transaction that acts, never to
//! skip that check. Bounded: when full it starts over, and a credential it
//! forgot costs one read at its next call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What a process knows of one credential.
#[derive(Debug, Clone)]
pub(super) enum Known<L> {
    /// Live when last read, with what never changes about it.
    Live(L),
    /// Revoked, expired or gone: why, as the caller is told.
    Ended(String),
}

pub(super) struct Memory<L> {
    entries: Mutex<HashMap<String, Known<L>>>,
    reads: AtomicU64,
    max: usize,
}

impl<L: Clone> Memory<L> {
    pub(super) fn new(max: usize) -> Memory<L> {
        Memory {
            entries: Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Known<L>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Room for `key`: a full memory starts over rather than grow.
    fn room_for(&self, entries: &mut HashMap<String, Known<L>>, key: &str) {
        if entries.len() >= self.max && !entries.contains_key(key) {
            entries.clear();
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Known<L>> {
        self.lock().get(key).cloned()
    }

    /// A read of a credential's row, to admit or confirm it.
    pub(super) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// How many rows were read to admit or confirm a credential.
    pub(super) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// What a read found. One seen ended stays ended here, whatever a read
    /// that began before its end says.
    pub(super) fn learn(&self, key: &str, known: Known<L>) {
        let mut entries = self.lock();
        self.room_for(&mut entries, key);
        match entries.get_mut(key) {
            Some(Known::Ended(_)) => {}
            Some(entry) => *entry = known,
            None => {
                entries.insert(key.to_owned(), known);
            }
        }
    }

    /// It has ended (ended here, or found ended by a transaction).
    pub(super) fn ended(&self, key: &str, why: &str) {
        let mut entries = self.lock();
        self.room_for(&mut entries, key);
        entries.insert(key.to_owned(), Known::Ended(why.to_owned()));
    }

    /// Every live entry that `is` picks out has ended, for when the
    /// credential is known by something other than the key it is kept under.
    pub(super) fn ended_where(&self, is: impl Fn(&L) -> bool, why: &str) {
        for entry in self.lock().values_mut() {
            if matches!(entry, Known::Live(l) if is(l)) {
                *entry = Known::Ended(why.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(m: &Memory<u32>, k: &str) -> Option<u32> {
        match m.get(k) {
            Some(Known::Live(v)) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn an_ended_credential_stays_ended_whatever_a_later_read_says() {
        let m = Memory::new(10);
        m.learn("a", Known::Live(1));
        m.ended("a", "revoked");
        m.learn("a", Known::Live(1));
        assert!(matches!(m.get("a"), Some(Known::Ended(why)) if why == "revoked"));
    }

    #[test]
    fn ended_where_ends_only_the_entries_it_picks() {
        let m = Memory::new(10);
        m.learn("a", Known::Live(1));
        m.learn("b", Known::Live(2));
        m.ended_where(|v| *v == 1, "revoked");
        assert!(matches!(m.get("a"), Some(Known::Ended(_))));
        assert_eq!(live(&m, "b"), Some(2));
    }

    #[test]
    fn a_full_memory_starts_over_rather_than_grow() {
        let m = Memory::new(2);
        m.learn("a", Known::Live(1));
        m.learn("b", Known::Live(2));
        m.learn("a", Known::Live(3));
        assert_eq!(live(&m, "a"), Some(3), "a known key is updated in place");
        m.learn("c", Known::Live(4));
        assert_eq!((live(&m, "a"), live(&m, "b"), live(&m, "c")), (None, None, Some(4)));
    }
}
