use std::time::Duration;

use super::config::default_margin;
use super::*;
use crate::core::clock::Clock;

const SEC: u64 = 1_000_000_000;

fn limiter(
    max_concurrent: Option<u64>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    window: f64,
    burst: Option<u64>,
) -> (LimiterBudget, Clock) {
    let clock = Clock::manual();
    let config = LimiterConfig::new(max_concurrent, rpm, tpm, window, burst, Some(0.0)).unwrap();
    (LimiterBudget::new(config), clock)
}

fn req(tokens: u64) -> LimiterRequest {
    LimiterRequest {
        tokens,
        lend: false,
    }
}

fn lent() -> LimiterRequest {
    LimiterRequest {
        tokens: 0,
        lend: true,
    }
}

fn granted(check: Check<LimiterGrant>) -> LimiterGrant {
    match check {
        Check::Granted(grant) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// Drives a limiter with a backlog of requests, each started as soon as it is allowed
/// (jumping the clock to the retry instant), and returns the start times.
pub(in crate::core) fn saturate(
    budget: &mut LimiterBudget,
    clock: &Clock,
    tokens: u64,
    until: u64,
) -> Vec<u64> {
    let mut starts = Vec::new();
    loop {
        let now = clock.now();
        if now.as_u64() >= until {
            return starts;
        }
        match budget.try_take(
            &LimiterRequest {
                tokens,
                lend: false,
            },
            now,
        ) {
            Check::Granted(grant) => {
                starts.push(now.as_u64());
                budget.release(&grant);
            }
            Check::RetryAt(at) => clock.advance(Duration::from_nanos(at.as_u64() - now.as_u64())),
            Check::WaitForRelease => panic!("nothing is held"),
        }
    }
}

fn max_in_any_window(starts: &[u64], window: u64) -> usize {
    let mut lo = 0;
    let mut best = 0;
    for (hi, &t) in starts.iter().enumerate() {
        while starts[lo] + window <= t {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

#[test]
fn concurrency_is_capped_and_released() {
    let (mut b, clock) = limiter(Some(2), None, None, 60.0, None);
    let g1 = granted(b.try_take(&req(0), clock.now()));
    let _g2 = granted(b.try_take(&req(0), clock.now()));
    assert_eq!(b.try_take(&req(0), clock.now()), Check::WaitForRelease);
    b.release(&g1);
    assert_eq!(b.figures(clock.now()).in_flight, 1);
    granted(b.try_take(&req(0), clock.now()));
}

#[test]
fn rpm_is_exact_in_every_window_and_fully_used() {
    for burst in [1, 5, 30] {
        let (mut b, clock) = limiter(None, Some(60), None, 6.0, Some(burst));
        let starts = saturate(&mut b, &clock, 0, 60 * SEC);
        assert!(
            max_in_any_window(&starts, 6 * SEC) <= 60,
            "burst {burst}: window over the limit"
        );
        // Ten windows' worth of budget, all of it used.
        assert_eq!(starts.len(), 600, "burst {burst}: utilisation");
        // And spread out: never more than `burst` back to back.
        let max_same_instant = starts
            .chunk_by(|a, b| a == b)
            .map(<[u64]>::len)
            .max()
            .unwrap();
        assert!(
            max_same_instant as u64 <= burst,
            "burst {burst}: {max_same_instant} at one instant"
        );
    }
}

#[test]
fn default_burst_is_about_one_seconds_share() {
    let burst = |rpm, window| {
        LimiterConfig::new(None, Some(rpm), None, window, None, None)
            .unwrap()
            .burst
    };
    assert_eq!(burst(600, 60.0), Some(10));
    assert_eq!(burst(30, 60.0), Some(1));
    assert_eq!(burst(5, 1.0), Some(5));
    assert_eq!(
        LimiterConfig::new(None, None, Some(100), 60.0, None, None)
            .unwrap()
            .burst,
        None
    );
}

#[test]
fn tpm_is_exact_and_one_request_may_take_all_of_it() {
    let (mut b, clock) = limiter(None, None, Some(1000), 60.0, None);
    assert!(b.validate(&req(1000)).is_ok());
    assert_eq!(b.validate(&req(1001)).unwrap_err().name, "tokens");
    granted(b.try_take(&req(1000), clock.now()));
    assert_eq!(
        b.try_take(&req(1), clock.now()),
        Check::RetryAt(Nanos::new(60 * SEC))
    );
    let starts = saturate(&mut b, &clock, 300, 600 * SEC);
    assert!(max_in_any_window(&starts, 60 * SEC) * 300 <= 1000);
}

#[test]
fn settle_refunds_to_the_grants_entry_or_charges_the_excess() {
    let (mut b, clock) = limiter(None, None, Some(1000), 60.0, None);
    let mut big = granted(b.try_take(&req(800), clock.now()));
    assert!(matches!(
        b.try_take(&req(300), clock.now()),
        Check::RetryAt(_)
    ));
    b.settle(&mut big, 100, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(100));
    let mut next = granted(b.try_take(&req(300), clock.now()));
    b.settle(&mut next, 900, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(1000));
    assert_eq!(b.figures(clock.now()).tokens_granted, 1000);
    assert!(matches!(
        b.try_take(&req(1), clock.now()),
        Check::RetryAt(_)
    ));
}

#[test]
fn pause_stops_every_grant_until_it_ends() {
    let (mut b, clock) = limiter(Some(10), None, None, 60.0, None);
    b.pause(clock.now(), 20.0);
    assert_eq!(
        b.try_take(&req(0), clock.now()),
        Check::RetryAt(Nanos::new(20 * SEC))
    );
    clock.advance(Duration::from_secs(20));
    granted(b.try_take(&req(0), clock.now()));
}

#[test]
fn an_abandoned_grant_is_refunded_to_the_windows() {
    let (mut b, clock) = limiter(Some(1), Some(1), Some(10), 60.0, None);
    let grant = granted(b.try_take(&req(10), clock.now()));
    b.give_back(grant, clock.now());
    let figures = b.figures(clock.now());
    assert_eq!(
        (
            figures.in_flight,
            figures.requests_in_window,
            figures.tokens_in_window
        ),
        (0, Some(0), Some(0))
    );
}

#[test]
fn grants_from_before_a_fork_do_not_count_in_the_child() {
    let (mut b, clock) = limiter(Some(1), None, None, 60.0, None);
    let before = granted(b.try_take(&req(0), clock.now()));
    b.after_fork_in_child(true);
    let after = granted(b.try_take(&req(0), clock.now()));
    b.release(&before);
    assert_eq!(
        b.try_take(&req(0), clock.now()),
        Check::WaitForRelease,
        "the stale release changed nothing"
    );
    b.release(&after);
    assert_eq!(b.figures(clock.now()).in_flight, 0);
}

#[test]
fn lent_grants_release_in_any_order() {
    let (mut b, clock) = limiter(Some(2), Some(10), None, 60.0, Some(2));
    for _ in 0..2 {
        let grant = granted(b.try_take(&lent(), clock.now()));
        b.taken(&grant);
    }
    assert!(b.release_lent());
    assert!(b.release_lent());
    assert!(!b.release_lent());
    let figures = b.figures(clock.now());
    assert_eq!(
        (figures.in_flight, figures.requests_in_window),
        (0, Some(2))
    );
}

#[test]
fn lent_grants_from_before_a_fork_release_nothing_in_the_child() {
    let (mut b, clock) = limiter(Some(1), None, None, 60.0, None);
    let grant = granted(b.try_take(&lent(), clock.now()));
    b.taken(&grant);
    b.after_fork_in_child(true);
    granted(b.try_take(&req(0), clock.now()));
    assert!(!b.release_lent(), "the parent's block holds nothing here");
    assert_eq!(b.figures(clock.now()).in_flight, 1);
}

#[test]
fn pause_says_whether_it_started_one() {
    let (mut b, clock) = limiter(None, Some(10), None, 60.0, None);
    assert!(b.pause(clock.now(), 2.0));
    assert!(!b.pause(clock.now(), 5.0), "extends the pause in force");
    clock.advance(Duration::from_secs(5));
    assert!(b.pause(clock.now(), 1.0));
    assert!(
        !b.pause(clock.now() + Duration::from_secs(2), 0.0),
        "a zero pause starts none"
    );
}

#[test]
fn the_limit_that_holds_a_request_is_named() {
    let (mut b, clock) = limiter(Some(1), Some(2), Some(10), 1.0, Some(2));
    let g = granted(b.try_take(&req(10), clock.now()));
    assert_eq!(b.try_take(&req(1), clock.now()), Check::WaitForRelease);
    assert_eq!(b.blocked(), Some(Blocked::Concurrency));
    b.release(&g);
    assert!(matches!(
        b.try_take(&req(1), clock.now()),
        Check::RetryAt(_)
    ));
    assert_eq!(b.blocked(), Some(Blocked::Tokens));
    b.pause(clock.now(), 5.0);
    assert!(matches!(
        b.try_take(&req(1), clock.now()),
        Check::RetryAt(_)
    ));
    assert_eq!(b.blocked().map(Blocked::name), Some("pause"));
}

#[test]
fn tokens_charged_and_refunded_only_grow() {
    let (mut b, clock) = limiter(None, None, Some(1000), 60.0, None);
    let mut g = granted(b.try_take(&req(100), clock.now()));
    b.settle(&mut g, 40, clock.now());
    b.settle(&mut g, 70, clock.now());
    let other = granted(b.try_take(&req(50), clock.now()));
    b.give_back(other, clock.now());
    let f = b.figures(clock.now());
    assert_eq!(
        (f.tokens_charged, f.tokens_refunded, f.tokens_granted),
        (180, 110, 70)
    );
}

#[test]
fn bad_configuration_names_the_argument() {
    let err = |mc, rpm, tpm, window, burst| {
        LimiterConfig::new(mc, rpm, tpm, window, burst, None)
            .unwrap_err()
            .name
    };
    assert_eq!(err(Some(0), None, None, 60.0, None), "max_concurrent");
    assert_eq!(err(None, Some(0), None, 60.0, None), "rpm");
    assert_eq!(err(None, None, Some(0), 60.0, None), "tpm");
    assert_eq!(err(None, Some(1), None, 0.0, None), "window");
    assert_eq!(err(None, Some(1), None, f64::NAN, None), "window");
    assert_eq!(err(None, Some(1), None, 1e10, None), "window");
    assert_eq!(err(None, Some(10), None, 60.0, Some(11)), "burst");
    assert_eq!(err(None, None, Some(5), 60.0, Some(1)), "burst");
    assert_eq!(err(None, Some(u64::MAX), None, 1.0, None), "rpm");
}

#[test]
fn a_huge_pause_saturates_instead_of_wrapping() {
    let (mut b, clock) = limiter(Some(1), None, None, 60.0, None);
    clock.advance(Duration::from_secs(5));
    b.pause(clock.now(), 1e12);
    assert_eq!(
        b.try_take(&req(0), clock.now()),
        Check::RetryAt(Nanos::new(u64::MAX))
    );
}

#[test]
fn the_margin_keeps_each_start_counted_a_little_past_the_window() {
    let clock = Clock::manual();
    let config = LimiterConfig::new(None, Some(1), None, 60.0, None, None).unwrap();
    assert!((config.margin - 0.3).abs() < 1e-12, "default: window / 200");
    assert!((default_margin(2.0) - 0.05).abs() < 1e-12, "at least 50 ms");
    assert!(
        (default_margin(0.1) - 0.01).abs() < 1e-12,
        "at most a tenth of the window"
    );
    let mut b = LimiterBudget::new(config);
    granted(b.try_take(&req(0), clock.now()));
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        b.try_take(&req(0), clock.now()),
        Check::RetryAt(Nanos::new(60_300_000_000))
    );
    clock.advance(Duration::from_millis(300));
    granted(b.try_take(&req(0), clock.now()));
    let bad = |margin| {
        LimiterConfig::new(None, Some(1), None, 60.0, None, Some(margin))
            .unwrap_err()
            .name
    };
    assert_eq!(bad(-1.0), "margin");
    assert_eq!(bad(61.0), "margin");
    assert_eq!(bad(f64::NAN), "margin");
}

#[test]
fn settling_up_then_down_only_moves_the_grants_own_tokens() {
    let (mut b, clock) = limiter(None, None, Some(100), 1.0, None);
    let mut a = granted(b.try_take(&req(10), clock.now()));
    clock.advance(Duration::from_millis(300));
    let _b = granted(b.try_take(&req(40), clock.now()));
    // A used more than it reserved: counted at its own start, not now...
    b.settle(&mut a, 60, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(100));
    // ...and settling down again refunds A's tokens only, never B's.
    b.settle(&mut a, 0, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(40));
    b.settle(&mut a, 0, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(40));
    clock.advance(Duration::from_millis(1000));
    assert_eq!(
        b.figures(clock.now()).tokens_in_window,
        Some(0),
        "B's entry left at 1.3 s"
    );
}

#[test]
fn excess_after_the_entry_left_the_window_is_charged_now() {
    let (mut b, clock) = limiter(None, None, Some(100), 1.0, None);
    let mut a = granted(b.try_take(&req(10), clock.now()));
    clock.advance(Duration::from_millis(1500));
    b.settle(&mut a, 30, clock.now());
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(20));
}

#[test]
fn a_grant_taken_late_is_counted_from_when_it_is_taken() {
    let (mut b, clock) = limiter(None, Some(1), Some(100), 10.0, None);
    let grant = granted(b.try_take(&req(40), clock.now()));
    clock.advance(Duration::from_secs(3));
    let grant = b
        .pick_up(grant, Nanos::new(0), clock.now())
        .expect("still in time");
    assert_eq!(grant.charged, 40);
    clock.advance(Duration::from_secs(7));
    // Counted from 3 s, as the provider will count it: the window frees at 13 s, not 10 s.
    assert_eq!(
        b.try_take(&req(1), clock.now()),
        Check::RetryAt(Nanos::new(13 * SEC))
    );
    assert_eq!(b.figures(clock.now()).tokens_in_window, Some(40));
}

#[test]
fn a_grant_taken_after_a_whole_window_goes_back() {
    let (mut b, clock) = limiter(Some(1), Some(1), None, 10.0, None);
    let grant = granted(b.try_take(&req(0), clock.now()));
    clock.advance(Duration::from_secs(10));
    assert_eq!(b.pick_up(grant, Nanos::new(0), clock.now()), None);
    let figures = b.figures(clock.now());
    assert_eq!(
        (figures.in_flight, figures.requests_in_window),
        (0, Some(0))
    );
}

#[test]
fn late_pick_ups_never_put_more_than_rpm_in_any_window() {
    // Grants as early as allowed, each taken by its waiter after a random delay (sometimes
    // longer than the window); the start of each request is when it was taken. Every window
    // of the resulting starts holds at most rpm.
    let (rpm, window) = (5u64, 10 * SEC);
    let (mut b, clock) = limiter(None, Some(rpm), None, 10.0, Some(2));
    let mut rng = fastrand::Rng::with_seed(11);
    let mut handed: Vec<(u64, u64, LimiterGrant)> = Vec::new(); // (granted, taken at, grant)
    let mut starts = Vec::new();
    let mut retries = 0;
    for _ in 0..20_000 {
        clock.advance(Duration::from_nanos(rng.u64(0..SEC / 4)));
        let now = clock.now();
        handed.sort_by_key(|h| h.1);
        while handed.first().is_some_and(|h| h.1 <= now.as_u64()) {
            let (at, _, grant) = handed.remove(0);
            match b.pick_up(grant, Nanos::new(at), now) {
                Some(grant) => {
                    starts.push(now.as_u64());
                    b.release(&grant);
                }
                None => retries += 1,
            }
        }
        if let Check::Granted(grant) = b.try_take(&req(0), now) {
            let delay = if rng.u8(0..10) == 0 {
                rng.u64(0..2 * window)
            } else {
                rng.u64(0..SEC)
            };
            handed.push((now.as_u64(), now.as_u64() + delay, grant));
        }
    }
    starts.sort_unstable();
    assert!(
        starts.len() > 1000 && retries > 10,
        "{} starts, {retries} retries",
        starts.len()
    );
    assert!(max_in_any_window(&starts, window) <= rpm as usize);
}
