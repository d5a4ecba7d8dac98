//! Which waiters keep a timer for the head of the queue.
//!
//! Only time can serve the head when a rate limit holds it, and somebody must be awake when
//! that time comes. Waking every waiter would be a thundering herd; trusting the head alone
//! lets a blocked event loop stall everyone queued behind it (issue 9). So one waiter per
//! independent context keeps the timer: the first waiter of each event loop, up to the first
//! thread in the queue (a parked thread always wakes, so nobody behind it needs a timer).
//! With one event loop and any number of threads that is at most two timers, whatever the
//! length of the queue.

use std::collections::{BTreeSet, HashMap};

use crate::core::notify::Context;

/// The queued tickets of each context, in queue order.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    threads: BTreeSet<u64>,
    loops: HashMap<u64, BTreeSet<u64>>,
}

impl Watch {
    /// Notes that ticket `id` waits in `context`.
    pub(crate) fn insert(&mut self, id: u64, context: Context) {
        match context {
            Context::Thread => {
                self.threads.insert(id);
            }
            Context::EventLoop(l) => {
                self.loops.entry(l).or_default().insert(id);
            }
        }
    }

    /// Forgets ticket `id` (served, abandoned, or moving to another context).
    pub(crate) fn remove(&mut self, id: u64, context: Option<Context>) {
        match context {
            Some(Context::Thread) => {
                self.threads.remove(&id);
            }
            Some(Context::EventLoop(l)) => {
                if let Some(tickets) = self.loops.get_mut(&l) {
                    tickets.remove(&id);
                    if tickets.is_empty() {
                        self.loops.remove(&l);
                    }
                }
            }
            None => {}
        }
    }

    /// The tickets that keep a timer: the first of each event loop ahead of the first thread,
    /// and that thread.
    pub(crate) fn watchers(&self) -> Vec<u64> {
        let first_thread = self.threads.first().copied();
        let mut ids: Vec<u64> = self
            .loops
            .values()
            .filter_map(|tickets| tickets.first().copied())
            .filter(|&id| first_thread.is_none_or(|t| id < t))
            .collect();
        ids.extend(first_thread);
        ids
    }

    /// Whether ticket `id`, waiting in `context`, keeps a timer.
    pub(crate) fn is_watcher(&self, id: u64, context: Context) -> bool {
        let first_thread = self.threads.first().copied();
        match context {
            Context::Thread => first_thread == Some(id),
            Context::EventLoop(l) => {
                let first_of_loop = self.loops.get(&l).and_then(|t| t.first().copied());
                first_of_loop == Some(id) && first_thread.is_none_or(|t| id < t)
            }
        }
    }

    /// Forgets everything (a forked child).
    pub(crate) fn clear(&mut self) {
        self.threads.clear();
        self.loops.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_loop_up_to_the_first_thread() {
        let mut watch = Watch::default();
        for (id, context) in [
            (0, Context::EventLoop(1)),
            (1, Context::EventLoop(1)),
            (2, Context::EventLoop(2)),
            (3, Context::Thread),
            (4, Context::EventLoop(3)),
            (5, Context::Thread),
        ] {
            watch.insert(id, context);
        }
        let mut watchers = watch.watchers();
        watchers.sort_unstable();
        assert_eq!(watchers, vec![0, 2, 3]);
        assert!(watch.is_watcher(2, Context::EventLoop(2)));
        assert!(!watch.is_watcher(1, Context::EventLoop(1)));
        assert!(!watch.is_watcher(4, Context::EventLoop(3)));
        assert!(!watch.is_watcher(5, Context::Thread));
        watch.remove(0, Some(Context::EventLoop(1)));
        watch.remove(3, Some(Context::Thread));
        let mut watchers = watch.watchers();
        watchers.sort_unstable();
        assert_eq!(watchers, vec![1, 2, 4, 5]);
    }
}
