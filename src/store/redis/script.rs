//! One budget's keys and the calls of its script (`limiter.lua`), with their replies typed.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};

use crate::core::LimiterConfig;

/// The budget script, loaded once and called by its hash (EVALSHA; redis-rs loads it again
/// on NOSCRIPT, after a server restart).
static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("limiter.lua")));

/// The key layout's version: a change of layout changes every key, so two versions of
/// crewthrottle never read each other's state.
const LAYOUT: &str = "v1";

const SUFFIXES: [&str; 11] = [
    "config", "state", "requests", "tokens", "amounts", "holders", "queue", "queued", "leases",
    "handed", "reaped",
];

/// One shared budget: its keys (one hash tag, for Redis Cluster), its channel, its limits.
pub struct Budget {
    keys: Vec<String>,
    channel: String,
    digest: String,
    fields: [i64; 6],
    lease_us: i64,
    replace: bool,
    adaptive: bool,
}

/// A typed reply of the script.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Granted: the grant's id, its tokens, how long it waited (µs), and when it was granted
    /// on the server's clock (µs since the Unix epoch).
    Granted {
        id: u64,
        tokens: u64,
        waited_us: u64,
        stamp_us: u64,
    },
    /// Queued under this ticket; the head's retry delay if it is the head (µs).
    Queued { ticket: u64, retry_us: Option<u64> },
    /// Not granted now (`try_acquire`): when it might be (µs), and the limit that holds it.
    NotNow { retry_us: Option<u64>, by: String },
    /// Still waiting; its retry delay if it is the head (µs).
    Waiting { retry_us: Option<u64> },
    /// The ticket is not known (its lease expired).
    Unknown,
    /// An op's outcome: 1 done, 0 refused.
    Done(i64),
    /// The budget's figures.
    Stats(Vec<Value>),
    /// The outcome of a renewal: grants and tickets lost, tickets handed, the head.
    Renewed {
        lost: Vec<String>,
        handed: Vec<u64>,
        head: Option<(u64, Option<u64>)>,
    },
    /// The stored limits differ from this process's.
    Conflict(Vec<String>),
    /// The limits in force after what was learned (`learn`, `rate_limited`), and the AIMD
    /// factor in thousandths.
    Limits {
        max_concurrent: Option<u64>,
        rpm: Option<u64>,
        tpm: Option<u64>,
        factor: u32,
    },
}

/// What every reply carries besides its answer: the budget's epoch, and whether it differs
/// from the one the caller knew (the budget's state was lost and rebuilt).
#[derive(Debug, Clone, Default)]
pub struct Epoch {
    pub current: Option<String>,
    pub changed: bool,
}

impl Budget {
    /// The budget `name` under `prefix`, enforcing `config`; grants and waiters hold leases of
    /// `lease_us`; `replace` makes these limits replace stored ones.
    pub fn new(
        prefix: &str,
        name: &str,
        config: &LimiterConfig,
        lease_us: u64,
        replace: bool,
    ) -> Self {
        let base = format!("{{{prefix}:{name}}}:{LAYOUT}");
        let opt = |v: Option<u64>| v.map_or(-1, |v| v as i64);
        let fields = [
            opt(config.max_concurrent),
            opt(config.rpm),
            opt(config.tpm),
            (config.window_ns() / 1000) as i64,
            (config.counted_ns().saturating_sub(config.window_ns()) / 1000) as i64,
            i64::from(config.burst.unwrap_or(1)),
        ];
        let digest = format!(
            "mc={} rpm={} tpm={} window_us={} margin_us={} burst={} adaptive={}",
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            fields[4],
            fields[5],
            u8::from(config.adaptive)
        );
        Budget {
            keys: SUFFIXES.iter().map(|s| format!("{base}:{s}")).collect(),
            channel: format!("{base}:events"),
            digest,
            fields,
            lease_us: lease_us as i64,
            replace,
            adaptive: config.adaptive,
        }
    }

    /// The channel announcements go to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The lease of grants and queued waiters, in µs.
    pub fn lease_us(&self) -> u64 {
        self.lease_us as u64
    }

    /// Calls the script's `op` with `args`, telling it the epoch this process knows.
    ///
    /// # Errors
    /// Redis could not be reached, or answered with an error.
    pub async fn call(
        &self,
        conn: &mut ConnectionManager,
        op: &str,
        epoch: &str,
        args: &[String],
    ) -> RedisResult<(Reply, Epoch)> {
        let mut invocation = SCRIPT.prepare_invoke();
        for key in &self.keys {
            invocation.key(key);
        }
        invocation.arg(op).arg(&self.digest);
        for field in self.fields {
            invocation.arg(field);
        }
        invocation
            .arg(self.lease_us)
            .arg(if self.replace { "1" } else { "0" })
            .arg(epoch)
            .arg(&self.channel)
            .arg(if self.adaptive { "1" } else { "0" });
        for arg in args {
            invocation.arg(arg);
        }
        let value: Value = invocation.invoke_async(conn).await?;
        Ok(parse(op, &value))
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// An integer of a reply (Redis hands Lua numbers back as integers, strings as bulk).
pub fn int(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A text of a reply.
pub fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(Value::Int(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn delay(n: Option<i64>) -> Option<u64> {
    n.filter(|&d| d >= 0).map(|d| d as u64)
}

fn ids(csv: &str) -> Vec<u64> {
    csv.split(',').filter_map(|id| id.parse().ok()).collect()
}

fn parse(op: &str, value: &Value) -> (Reply, Epoch) {
    let v = items(value);
    let at = |i: usize| v.get(i);
    let n = |i: usize| int(at(i));
    let epoch_at = |i: usize| Epoch {
        current: Some(text(at(i))).filter(|e| !e.is_empty()),
        changed: n(i + 1) == Some(1),
    };
    let reply = match text(at(0)).as_str() {
        "G" => {
            let reply = Reply::Granted {
                id: n(1).unwrap_or(0) as u64,
                tokens: n(2).unwrap_or(0) as u64,
                waited_us: n(3).unwrap_or(0).max(0) as u64,
                stamp_us: n(6).unwrap_or(0).max(0) as u64,
            };
            return (reply, epoch_at(4));
        }
        "Q" => {
            let reply = Reply::Queued {
                ticket: n(1).unwrap_or(0) as u64,
                retry_us: delay(n(2)),
            };
            return (reply, epoch_at(3));
        }
        "N" if op == "renew" => {
            let head = n(3).filter(|&t| t >= 0).map(|t| (t as u64, delay(n(4))));
            let reply = Reply::Renewed {
                lost: text(at(1))
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                handed: ids(&text(at(2))),
                head,
            };
            return (reply, epoch_at(5));
        }
        "N" => {
            let reply = Reply::NotNow {
                retry_us: delay(n(1)),
                by: text(at(2)),
            };
            return (reply, epoch_at(3));
        }
        "W" => Reply::Waiting {
            retry_us: delay(n(1)),
        },
        "U" => Reply::Unknown,
        "S" => Reply::Stats(v.to_vec()),
        "CONFLICT" => Reply::Conflict((1..9).map(|i| text(at(i))).collect()),
        "L" => Reply::Limits {
            max_concurrent: n(1).filter(|&m| m > 0).map(|m| m as u64),
            rpm: n(2).filter(|&r| r > 0).map(|r| r as u64),
            tpm: n(3).filter(|&t| t > 0).map(|t| t as u64),
            factor: n(4).unwrap_or(1000).clamp(0, 1000) as u32,
        },
        _ => Reply::Done(n(1).unwrap_or(0)),
    };
    (reply, Epoch::default())
}

/// Announcements on a budget's channel: `handed,tickets;head;retry_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Tickets handed a grant, to be taken by their processes.
    pub handed: Vec<u64>,
    /// The head of the queue and when it may be served (None: at a release).
    pub head: Option<(u64, Option<u64>)>,
}

impl Announcement {
    /// Reads an announcement; `None` if it is not one.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(';');
        let handed = ids(parts.next()?);
        let head: i64 = parts.next()?.parse().ok()?;
        let retry: i64 = parts.next()?.parse().ok()?;
        Some(Announcement {
            handed,
            head: (head >= 0).then_some((head as u64, delay(Some(retry)))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back() {
        assert_eq!(
            Announcement::parse("3,4;7;1500"),
            Some(Announcement {
                handed: vec![3, 4],
                head: Some((7, Some(1500)))
            })
        );
        assert_eq!(
            Announcement::parse(";-1;-1"),
            Some(Announcement {
                handed: vec![],
                head: None
            })
        );
        assert_eq!(Announcement::parse("garbage"), None);
    }

    #[test]
    fn every_key_of_a_budget_shares_one_hash_tag() {
        let config = LimiterConfig::new(Some(2), Some(60), None, 60.0, None, None).unwrap();
        let budget = Budget::new("crewthrottle", "openai/gpt-4o", &config, 30_000_000, false);
        for key in budget.keys.iter().chain([&budget.channel]) {
            assert!(key.starts_with("{crewthrottle:openai/gpt-4o}:v1:"), "{key}");
        }
        assert!(budget.digest.contains("rpm=60"));
    }
}
