//! One connection per Redis server per process: commands and announcements share it (RESP3
//! pushes), it reconnects by itself and subscribes again, and each budget listening on it is
//! told when it did, so it can catch up on what it may have missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A budget that listens to its channel.
pub trait Listener: Send + Sync {
    /// An announcement on the budget's channel.
    fn announced(&self, payload: &str);
    /// The connection came back (or was made): announcements may have been missed.
    fn resubscribed(&self);
}

/// A live connection to one Redis server.
pub struct Hub {
    conn: ConnectionManager,
    /// Every budget of this process listening on a channel (several `Limiter` objects may
    /// name one budget).
    listeners: Mutex<HashMap<String, Vec<Weak<dyn Listener>>>>,
}

type Hubs = Option<(u32, HashMap<String, Arc<Hub>>)>;

static HUBS: Mutex<Hubs> = Mutex::new(None);

thread_local! {
    /// Held by the forking thread across `fork()`.
    static HELD_FOR_FORK: std::cell::RefCell<Option<std::sync::MutexGuard<'static, Hubs>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork()`, on the forking thread.
pub fn before_fork() {
    let guard = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
    HELD_FOR_FORK.with(|held| *held.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent and in the child.
pub fn after_fork() {
    HELD_FOR_FORK.with(|held| drop(held.borrow_mut().take()));
}

impl Hub {
    /// The process's connection to `url`, made if need be (within `timeout`).
    ///
    /// # Errors
    /// A sentence naming the URL and the cause.
    pub async fn get(url: &str, timeout: Duration) -> Result<Arc<Hub>, String> {
        if let Some(hub) = known(url) {
            return Ok(hub);
        }
        let hub = tokio::time::timeout(timeout, Hub::connect(url, timeout))
            .await
            .map_err(|_| format!("Redis at {url} did not answer within {timeout:?}"))??;
        let mut hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = std::process::id();
        let (_, map) = hubs.get_or_insert_with(|| (pid, HashMap::new()));
        Ok(Arc::clone(map.entry(url.to_owned()).or_insert(hub)))
    }

    async fn connect(url: &str, timeout: Duration) -> Result<Arc<Hub>, String> {
        let unreachable = |err: redis::RedisError| format!("Redis at {url} is unreachable: {err}");
        let info = url
            .into_connection_info()
            .map_err(|err| format!("bad Redis URL {url:?}: {err}"))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings)).map_err(unreachable)?;
        let (tx, rx) = unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2))
            .set_push_sender(tx)
            .set_automatic_resubscription();
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unreachable)?;
        let hub = Arc::new(Hub {
            conn,
            listeners: Mutex::new(HashMap::new()),
        });
        tokio::spawn(dispatch(Arc::downgrade(&hub), rx));
        Ok(hub)
    }

    /// A connection to send commands on (a cheap clone of the shared one).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Subscribes `listener` to `channel`.
    ///
    /// # Errors
    /// The subscription failed (Redis unreachable).
    pub async fn listen(
        &self,
        channel: &str,
        listener: Weak<dyn Listener>,
    ) -> Result<(), redis::RedisError> {
        {
            let mut listeners = self
                .listeners
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let on_channel = listeners.entry(channel.to_owned()).or_default();
            on_channel.retain(|l| l.strong_count() > 0);
            on_channel.push(listener);
        }
        self.conn.clone().subscribe(channel).await
    }

    fn listeners(&self, channel: &str) -> Vec<Arc<dyn Listener>> {
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listeners
            .get(channel)
            .map(|all| all.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

fn known(url: &str) -> Option<Arc<Hub>> {
    let mut hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
    if hubs
        .as_ref()
        .is_some_and(|(pid, _)| *pid != std::process::id())
    {
        // A forked child: the parent's connections belong to the parent.
        if let Some(stale) = hubs.take() {
            std::mem::forget(stale);
        }
    }
    hubs.as_ref()
        .and_then(|(_, map)| map.get(url))
        .map(Arc::clone)
}

/// Hands the pushes of a connection to the budgets listening.
async fn dispatch(hub: Weak<Hub>, mut pushes: UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                if let Some(msg) = Msg::from_push_info(push) {
                    deliver(&hub, &msg);
                }
            }
            PushKind::Subscribe => {
                let channel = push.data.first().and_then(|v| match v {
                    redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
                    _ => None,
                });
                for listener in channel.map(|c| hub.listeners(&c)).unwrap_or_default() {
                    listener.resubscribed();
                }
            }
            _ => {}
        }
    }
}

fn deliver(hub: &Hub, msg: &Msg) {
    let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
        return;
    };
    for listener in hub.listeners(msg.get_channel_name()) {
        listener.announced(payload);
    }
}
