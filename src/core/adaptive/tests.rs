use std::time::Duration;

use super::*;
use crate::core::clock::Clock;

const SEC: u64 = 1_000_000_000;
const WINDOW: u64 = 10 * SEC;

fn limits(max_concurrent: Option<u64>, rpm: Option<u64>, tpm: Option<u64>) -> Limits {
    Limits {
        max_concurrent,
        rpm,
        tpm,
    }
}

fn state(configured: Limits, learn: bool) -> (Adaptive, Clock) {
    let clock = Clock::manual();
    clock.advance(Duration::from_secs(100)); // not at the origin: cooldowns start "long ago"
    (Adaptive::new(configured, learn, WINDOW), clock)
}

fn headers(rpm: (u64, u64), tpm: (u64, u64)) -> Observation {
    Observation {
        requests: Reported {
            limit: Some(rpm.0),
            remaining: Some(rpm.1),
        },
        tokens: Reported {
            limit: Some(tpm.0),
            remaining: Some(tpm.1),
        },
        rate_limited: false,
    }
}

fn counted(requests: u64, tokens: u64) -> Counted {
    Counted {
        requests: Some(requests),
        tokens: Some(tokens),
    }
}

#[test]
fn configured_limits_stand_until_the_provider_says_otherwise() {
    let (a, _) = state(limits(Some(4), Some(60), Some(1000)), false);
    assert_eq!(a.effective(), limits(Some(4), Some(60), Some(1000)));
    assert_eq!(a.reason(), Reason::Configured);
}

#[test]
fn headers_lower_a_configured_limit_and_never_raise_it() {
    let (mut a, clock) = state(limits(None, Some(60), Some(1000)), false);
    a.observe(&headers((40, 40), (5000, 5000)), counted(0, 0), clock.now());
    assert_eq!(a.effective(), limits(None, Some(40), Some(1000)));
    assert_eq!(a.reason(), Reason::Headers);
    // Without `adaptive`, a kind the user did not limit stays unlimited.
    let (mut b, clock) = state(limits(None, Some(60), None), false);
    b.observe(
        &headers((100, 100), (5000, 5000)),
        counted(0, 0),
        clock.now(),
    );
    assert_eq!(b.effective(), limits(None, Some(60), None));
    assert_eq!(b.reason(), Reason::Configured);
}

#[test]
fn an_adaptive_limiter_starts_with_one_in_flight_and_one_per_second() {
    let (mut a, clock) = state(limits(None, None, None), true);
    assert_eq!(a.effective(), limits(Some(1), Some(10), None));
    assert_eq!(a.reason(), Reason::Conservative);
    a.observe(
        &headers((500, 499), (30_000, 29_900)),
        counted(1, 100),
        clock.now(),
    );
    assert_eq!(a.effective(), limits(None, Some(500), Some(30_000)));
    assert_eq!(a.reason(), Reason::Headers);
}

#[test]
fn an_adaptive_limiter_keeps_what_was_configured_and_learns_the_rest() {
    let (mut a, clock) = state(limits(Some(8), Some(100), None), true);
    assert_eq!(a.effective(), limits(Some(1), Some(10), None));
    a.observe(
        &headers((500, 499), (30_000, 29_900)),
        counted(1, 100),
        clock.now(),
    );
    assert_eq!(a.effective(), limits(Some(8), Some(100), Some(30_000)));
}

#[test]
fn a_provider_without_headers_ends_the_conservative_start_after_a_few_responses() {
    let (mut a, clock) = state(limits(Some(3), None, None), true);
    for _ in 1..SILENT_RESPONSES {
        a.observe(&Observation::default(), Counted::default(), clock.now());
        assert_eq!(a.reason(), Reason::Conservative);
    }
    a.observe(&Observation::default(), Counted::default(), clock.now());
    assert_eq!(a.effective(), limits(Some(3), None, None));
    assert_eq!(a.reason(), Reason::Configured);
}

#[test]
fn traffic_the_provider_saw_beyond_ours_is_left_to_others_while_responses_show_it() {
    let (mut a, clock) = state(limits(None, Some(100), Some(10_000)), false);
    // We count 20 requests; the provider saw 50: 30 are someone else's.
    a.observe(
        &headers((100, 50), (10_000, 6_000)),
        counted(20, 3_000),
        clock.now(),
    );
    assert_eq!(a.foreign(), (30, 1_000));
    assert_eq!(a.own_limits(), (Some(70), Some(9_000)));
    // A response admitted while our own burst was under way shows less: the level holds.
    a.observe(
        &headers((100, 40), (10_000, 6_000)),
        counted(40, 3_000),
        clock.now(),
    );
    assert_eq!(a.foreign().0, 30);
    // Responses show less: the level follows them down once they have for a window.
    let step = Duration::from_nanos(WINDOW / STEPS_PER_WINDOW);
    let less = headers((100, 90), (10_000, 7_000));
    for _ in 0..STEPS_PER_WINDOW - 1 {
        clock.advance(step);
        a.observe(&less, counted(5, 3_000), clock.now());
        assert_eq!(a.foreign().0, 30);
    }
    clock.advance(step);
    a.observe(&less, counted(5, 3_000), clock.now());
    assert_eq!(a.foreign(), (5, 0));
    // No response for a long time (we sent nothing): the level holds still.
    clock.advance(Duration::from_nanos(5 * WINDOW));
    assert_eq!(a.foreign().0, 5);
    // More is seen at once.
    a.observe(
        &headers((100, 10), (10_000, 7_000)),
        counted(5, 3_000),
        clock.now(),
    );
    assert_eq!(a.foreign().0, 85);
    assert_eq!(a.own_limits().0, Some(15));
}

#[test]
fn a_key_taken_entirely_by_others_still_lets_one_request_through_per_window() {
    let (mut a, clock) = state(limits(None, Some(10), None), false);
    a.observe(&headers((10, 0), (0, 0)), counted(0, 0), clock.now());
    assert_eq!(
        a.own_limits(),
        (Some(1), None),
        "to learn when room comes back"
    );
}

#[test]
fn a_share_left_to_others_by_configuring_less_is_not_counted_against_us() {
    // The key allows 100; we configured 60: the other 40 are for someone else.
    let (mut a, clock) = state(limits(None, Some(60), None), false);
    a.observe(&headers((100, 50), (0, 0)), counted(20, 0), clock.now());
    assert_eq!(a.foreign().0, 0, "30 foreign: within the 40 left to others");
    a.observe(&headers((100, 20), (0, 0)), counted(20, 0), clock.now());
    assert_eq!(a.foreign().0, 20, "60 foreign: 20 more than left to others");
    assert_eq!(a.own_limits().0, Some(40));
}

#[test]
fn an_unexplained_429_lowers_the_rates_once_per_step_and_time_brings_them_back() {
    let (mut a, clock) = state(limits(Some(4), Some(100), Some(10_000)), false);
    a.rate_limited(clock.now());
    assert_eq!(a.effective(), limits(Some(4), Some(70), Some(7_000)));
    assert_eq!(a.reason(), Reason::RateLimited);
    // The other requests in flight come back 429 too: one decrease for all of them.
    a.rate_limited(clock.now());
    assert_eq!(a.effective().rpm, Some(70));
    let step = Duration::from_nanos(WINDOW / STEPS_PER_WINDOW);
    clock.advance(step);
    assert!(a.tick(clock.now()));
    assert_eq!(a.effective().rpm, Some(75));
    clock.advance(step * 10);
    assert!(a.tick(clock.now()));
    assert_eq!(a.effective(), limits(Some(4), Some(100), Some(10_000)));
    assert_eq!(a.reason(), Reason::Configured);
    assert!(!a.tick(clock.now()));
}

#[test]
fn repeated_429s_lower_down_to_a_floor() {
    let (mut a, clock) = state(limits(None, Some(1000), None), false);
    for _ in 0..50 {
        a.rate_limited(clock.now());
        clock.advance(Duration::from_nanos(WINDOW / STEPS_PER_WINDOW));
    }
    assert_eq!(a.effective().rpm, Some(100));
    let (mut tiny, clock) = state(limits(None, Some(1), None), false);
    tiny.rate_limited(clock.now());
    assert_eq!(tiny.effective().rpm, Some(1), "never below one");
}

#[test]
fn a_429_the_headers_explain_lowers_nothing() {
    let (mut a, clock) = state(limits(None, Some(100), None), false);
    let mut seen = headers((100, 0), (0, 0));
    seen.rate_limited = true;
    a.observe(&seen, counted(60, 0), clock.now());
    assert_eq!(a.foreign().0, 40);
    assert_eq!(a.effective().rpm, Some(100));
    // The retry layer counts the same 429 a moment later: still explained.
    a.rate_limited(clock.now());
    assert_eq!(a.effective().rpm, Some(100));
    // A 429 whose headers show nothing beyond what we knew is not explained.
    clock.advance(Duration::from_secs(2));
    a.observe(&seen, counted(60, 0), clock.now());
    assert_eq!(a.effective().rpm, Some(70));
}

#[test]
fn a_limiter_without_rate_limits_has_nothing_to_lower() {
    let (mut a, clock) = state(limits(Some(5), None, None), false);
    a.rate_limited(clock.now());
    assert_eq!(a.effective(), limits(Some(5), None, None));
    assert_eq!(a.reason(), Reason::Configured);
}

#[test]
fn changes_are_told_once_and_a_recovery_only_when_it_ends() {
    let (mut a, clock) = state(limits(None, Some(100), None), false);
    assert_eq!(a.take_change(), None);
    a.rate_limited(clock.now());
    let change = a.take_change().unwrap();
    assert_eq!(
        change.to,
        (limits(None, Some(70), None), Reason::RateLimited)
    );
    assert_eq!(a.take_change(), None);
    let step = Duration::from_nanos(WINDOW / STEPS_PER_WINDOW);
    clock.advance(step);
    a.tick(clock.now());
    assert_eq!(a.take_change(), None, "a step of the recovery");
    a.rate_limited(clock.now());
    assert_eq!(
        a.take_change().unwrap().to.0.rpm,
        Some(52),
        "lower than last told"
    );
    clock.advance(step * 20);
    a.tick(clock.now());
    let change = a.take_change().unwrap();
    assert_eq!(
        change.to,
        (limits(None, Some(100), None), Reason::Configured)
    );
}

#[test]
fn the_summary_round_trips_through_words_and_is_adopted() {
    let (mut a, clock) = state(limits(None, None, None), true);
    a.observe(
        &headers((100, 40), (9_000, 9_000)),
        counted(10, 0),
        clock.now(),
    );
    a.rate_limited(clock.now());
    let summary = a.summary();
    assert_eq!(Summary::from_words(&summary.to_words()), summary);
    assert_eq!(summary.foreign_requests, 50);
    let (mut b, clock_b) = state(limits(None, None, None), true);
    b.adopt(&summary, clock_b.now());
    assert_eq!(b.foreign(), (50, 0));
    assert_eq!(b.effective(), a.effective());
    assert_eq!(b.reason(), Reason::RateLimited);
    let garbage = Summary::from_words(&[0, u64::MAX - 1, 7, 2, u64::MAX, 0]);
    assert_eq!(garbage.learned_rpm, Some(1));
    assert_eq!(garbage.learned_tpm, Some(MAX_AMOUNT));
    assert_eq!(garbage.factor, MIN_FACTOR);
}

#[test]
fn nothing_learned_ever_raises_a_configured_limit() {
    // Random headers, 429s and time: the effective limits never exceed the configured ones.
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..200 {
        let some = |rng: &mut fastrand::Rng| (rng.u8(..) % 3 > 0).then(|| rng.u64(1..2_000));
        let configured = limits(some(&mut rng), some(&mut rng), some(&mut rng));
        let (mut a, clock) = state(configured, rng.bool());
        for _ in 0..100 {
            let reported = |rng: &mut fastrand::Rng| Reported {
                limit: (rng.bool()).then(|| rng.u64(0..u64::MAX)),
                remaining: (rng.bool()).then(|| rng.u64(0..u64::MAX)),
            };
            let seen = Observation {
                requests: reported(&mut rng),
                tokens: reported(&mut rng),
                rate_limited: rng.bool(),
            };
            let counts = counted(rng.u64(0..5_000), rng.u64(0..5_000));
            match rng.u8(0..3) {
                0 => a.observe(&seen, counts, clock.now()),
                1 => a.rate_limited(clock.now()),
                _ => drop(a.tick(clock.now())),
            }
            clock.advance(Duration::from_millis(rng.u64(0..3_000)));
            let e = a.effective();
            let (own_rpm, own_tpm) = a.own_limits();
            assert!(own_rpm <= e.rpm && own_tpm <= e.tpm);
            for (eff, conf) in [
                (e.max_concurrent, configured.max_concurrent),
                (e.rpm, configured.rpm),
                (e.tpm, configured.tpm),
            ] {
                if let Some(conf) = conf {
                    assert!(eff.is_some_and(|eff| (1..=conf).contains(&eff)), "{e:?}");
                }
            }
        }
    }
}

// -- through the limiter: `try_take` consults the effective limits under the gate's lock ------

mod through_the_limiter {
    use std::time::Duration;

    use super::{headers, SEC};
    use crate::core::clock::Clock;
    use crate::core::gate::{Check, Resource};
    use crate::core::limiter::tests::saturate;
    use crate::core::limiter::{LimiterBudget, LimiterConfig, LimiterRequest};

    fn budget(rpm: Option<u64>, tpm: Option<u64>, adaptive: bool) -> (LimiterBudget, Clock) {
        let config = LimiterConfig::new(None, rpm, tpm, 10.0, None, Some(0.0))
            .unwrap()
            .with_adaptive(adaptive);
        let clock = Clock::manual();
        clock.advance(Duration::from_secs(100));
        (LimiterBudget::new(config), clock)
    }

    /// Grants `tokens`-sized requests as soon as allowed until `secs` have passed; returns
    /// the start times.
    fn run(b: &mut LimiterBudget, clock: &Clock, tokens: u64, secs: u64) -> Vec<u64> {
        let until = clock.now().as_u64() + secs * SEC;
        saturate(b, clock, tokens, until)
    }

    fn most_in_a_window(starts: &[u64]) -> usize {
        let mut lo = 0;
        (0..starts.len())
            .map(|hi| {
                while starts[lo] + 10 * SEC <= starts[hi] {
                    lo += 1;
                }
                hi + 1 - lo
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_conservative_start_holds_one_in_flight_then_the_learned_limits_rule() {
        let (mut b, clock) = budget(None, None, true);
        let first = match b.try_take(&LimiterRequest::default(), clock.now()) {
            Check::Granted(grant) => grant,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            b.try_take(&LimiterRequest::default(), clock.now()),
            Check::WaitForRelease
        );
        b.release(&first);
        assert_eq!(
            run(&mut b, &clock, 0, 10).len(),
            9,
            "one per second after the first"
        );
        b.observe(&headers((50, 40), (1_000, 1_000)), clock.now());
        let starts = run(&mut b, &clock, 0, 100);
        assert!(most_in_a_window(&starts) <= 50);
        assert!(
            starts.len() >= 490,
            "the learned limit is used in full: {}",
            starts.len()
        );
    }

    #[test]
    fn other_clients_traffic_is_left_room_for_while_responses_show_it() {
        let (mut b, clock) = budget(Some(20), None, false);
        b.observe(&headers((20, 5), (0, 0)), clock.now()); // we granted none: 15 are theirs
        let starts = run(&mut b, &clock, 0, 30);
        assert!(most_in_a_window(&starts) <= 5, "{starts:?}");
        assert_eq!(starts.len(), 15, "five a window, spread out");
        assert!(
            starts.windows(2).all(|w| w[1] - w[0] >= 2 * SEC),
            "{starts:?}"
        );
    }

    #[test]
    fn a_request_above_a_lowered_tpm_waits_for_an_empty_window_not_forever() {
        let (mut b, clock) = budget(None, Some(1_000), false);
        b.observe(&headers((0, 0), (400, 400)), clock.now());
        assert_eq!(
            b.validate(&LimiterRequest {
                tokens: 900,
                lend: false
            }),
            Ok(())
        );
        let starts = run(&mut b, &clock, 900, 35);
        assert_eq!(starts.len(), 4, "one per window: {starts:?}");
        assert_eq!(
            b.validate(&LimiterRequest {
                tokens: 1_001,
                lend: false
            })
            .unwrap_err()
            .name,
            "tokens"
        );
    }

    #[test]
    fn an_unexplained_429_slows_the_grants_and_never_passes_the_configured_rate() {
        let (mut b, clock) = budget(Some(100), None, false);
        let before = run(&mut b, &clock, 0, 20).len();
        assert!(
            b.rate_limited(clock.now()).is_some(),
            "a change worth a log line"
        );
        assert_eq!(b.adaptive().effective().rpm, Some(70));
        let starts = run(&mut b, &clock, 0, 20);
        assert!(most_in_a_window(&starts) <= 100);
        assert!(starts.len() < before, "{} < {before}", starts.len());
        assert_eq!(b.adaptive().effective().rpm, Some(100), "recovered");
    }
}
