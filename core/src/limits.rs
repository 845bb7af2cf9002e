//! Bounds on what one caller can make the server hold or compute: what one
//! person or credential may hold open at once (live streams, long-polls),
//! and a fixed pool of threads for CPU- and memory-heavy work (password
//! hashing, diffs) with a bounded line in front of it.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::Semaphore;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run heavy jobs in turn, off the async
/// workers. Fixed, not the blocking pool: the allocator keeps memory per
/// thread, so a burst of 19 MiB password hashes on a growing pool of threads
/// would leave that much resident for each of them; here at most `threads`
/// jobs hold memory at once. A job that finds the line full is refused at
/// once (`RateLimited`), never left to wait without bound.
pub struct Workers {
    jobs: mpsc::Sender<Job>,
    line: Arc<Semaphore>,
}

impl Workers {
    /// `threads` threads named `name`, and room for `line` jobs waiting or
    /// running.
    pub fn new(name: &str, threads: usize, line: usize) -> Workers {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match next {
                        Ok(job) => job(),
                        // The pool was dropped.
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a {name} worker thread");
            }
        }
        Workers {
            jobs,
            line: Arc::new(Semaphore::new(line.max(1))),
        }
    }

    /// Run `f` on a worker when one is free.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _place = self
            .line
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::RateLimited { retry_after_secs: 1 })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| Error::internal("the worker threads have stopped"))?;
        rx.await.map_err(|_| Error::internal("a worker thread dropped its job"))
    }
}

/// Counts of what each key holds open (live streams, long-polls).
#[derive(Debug, Default)]
pub struct Slots {
    held: Mutex<HashMap<String, usize>>,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    key: String,
}

impl Slots {
    /// A slot for `key` if it holds fewer than `max`.
    pub fn take(self: &Arc<Self>, key: &str, max: usize) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key: key.to_owned(),
        })
    }

    pub fn held(&self, key: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_run_jobs_on_their_own_threads_and_refuse_beyond_the_line() {
        let w = Arc::new(Workers::new("test", 1, 3));
        let name = w
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-0"));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (w, hold) = (w.clone(), hold.clone());
                tokio::spawn(async move {
                    w.run(move || {
                        let _ = hold.lock().unwrap().recv();
                    })
                    .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for _ in 0..5 {
            let _ = release.send(());
        }
        let mut refused = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(Error::RateLimited { .. })) {
                refused += 1;
            }
        }
        assert_eq!(refused, 2, "a line of 3: the other two are refused at once");
    }

    #[test]
    fn a_key_holds_at_most_its_slots_and_gets_them_back() {
        let s = Arc::new(Slots::default());
        let a = s.take("alice", 2).unwrap();
        let _b = s.take("alice", 2).unwrap();
        assert!(s.take("alice", 2).is_none());
        assert!(s.take("bob", 2).is_some(), "one person's slots are theirs alone");
        drop(a);
        assert_eq!(s.held("alice"), 1);
        assert!(s.take("alice", 2).is_some());
    }
}
