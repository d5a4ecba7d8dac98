//! When a gate starts "pacing hard" and when it is calm again (issue 11: one log line when a
//! limiter starts holding callers back, never a line per call).
//!
//! An episode starts when the head of the queue has waited longer than `start_after`, and ends
//! once the queue has stayed empty for `calm_after`. Both are judged whenever the gate is
//! touched, so a change is seen at the next acquire, release, or timer of a waiter.

use crate::core::clock::Nanos;

/// When pressure is judged (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// How long the head of the queue must have waited for an episode to start.
    pub start_after: u64,
    /// How long the queue must stay empty for an episode to end.
    pub calm_after: u64,
}

/// A change of pressure, reported once.
#[derive(Debug, Clone, PartialEq)]
pub enum PressureEvent {
    /// Callers are being held back: the head has waited `waited_ns`, `waiting` are queued, and
    /// `reason` names the limit that holds it.
    Started {
        waited_ns: u64,
        waiting: usize,
        reason: Option<&'static str>,
    },
    /// Calm again after an episode of `lasted_ns`.
    Ended { lasted_ns: u64 },
}

/// The pressure state of one gate.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    since: Option<Nanos>,
    empty_since: Option<Nanos>,
    episodes: u64,
}

impl Pressure {
    /// Judges the queue at `now`: `head_since` is when its head started waiting (None: empty).
    pub(crate) fn judge(
        &mut self,
        thresholds: Thresholds,
        head_since: Option<Nanos>,
        waiting: usize,
        reason: Option<&'static str>,
        now: Nanos,
    ) -> Option<PressureEvent> {
        let now_ns = now.as_u64();
        match head_since {
            Some(since) => {
                self.empty_since = None;
                let waited_ns = now_ns.saturating_sub(since.as_u64());
                if self.since.is_none() && waited_ns >= thresholds.start_after {
                    self.since = Some(now);
                    self.episodes += 1;
                    return Some(PressureEvent::Started {
                        waited_ns,
                        waiting,
                        reason,
                    });
                }
                None
            }
            None => {
                let empty_since = *self.empty_since.get_or_insert(now);
                let start = self.since?;
                if now_ns.saturating_sub(empty_since.as_u64()) < thresholds.calm_after {
                    return None;
                }
                self.since = None;
                Some(PressureEvent::Ended {
                    lasted_ns: now_ns.saturating_sub(start.as_u64()),
                })
            }
        }
    }

    /// Nothing under way and nothing to judge while the queue stays empty.
    pub(crate) fn is_calm(&self) -> bool {
        self.since.is_none() && self.empty_since.is_some()
    }

    /// When the current episode started, if one is under way.
    pub(crate) fn since(&self) -> Option<Nanos> {
        self.since
    }

    /// Episodes so far.
    pub(crate) fn episodes(&self) -> u64 {
        self.episodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T: Thresholds = Thresholds {
        start_after: SEC,
        calm_after: 10 * SEC,
    };

    fn at(s: f64) -> Nanos {
        Nanos::new((s * SEC as f64) as u64)
    }

    #[test]
    fn one_event_when_it_starts_and_one_when_it_ends() {
        let mut p = Pressure::default();
        let head = Some(at(0.0));
        assert_eq!(p.judge(T, head, 3, Some("rpm"), at(0.5)), None);
        let started = p.judge(T, head, 3, Some("rpm"), at(1.5));
        assert!(matches!(
            started,
            Some(PressureEvent::Started { waiting: 3, .. })
        ));
        assert_eq!(
            p.judge(T, Some(at(1.4)), 2, Some("rpm"), at(5.0)),
            None,
            "once"
        );
        assert_eq!(
            p.judge(T, None, 0, None, at(6.0)),
            None,
            "empty, not yet calm"
        );
        assert_eq!(p.judge(T, Some(at(7.0)), 1, None, at(7.0)), None);
        assert_eq!(
            p.judge(T, None, 0, None, at(8.0)),
            None,
            "empty again: a new count"
        );
        let ended = p.judge(T, None, 0, None, at(18.0));
        assert_eq!(
            ended,
            Some(PressureEvent::Ended {
                lasted_ns: (16.5 * SEC as f64) as u64
            })
        );
        assert_eq!((p.since(), p.episodes()), (None, 1));
    }
}
