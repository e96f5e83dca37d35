//! Recovery records in Redis: `syd:pid:<pid>` = `<owner>\n<record JSON>` with a TTL.
//! Owner-checked writes are Lua scripts (atomic); a recovery takes a record with `GETDEL`.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use super::{record_key, Record, SessionStore, StoreError};

/// Replaces the value if its owner prefix matches: `KEYS[1]`, `ARGV` = owner, value, ttl ms.
const UPDATE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\n' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes the key if its owner prefix matches: `KEYS[1]`, `ARGV` = owner.
const REMOVE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// Records in Redis; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    update: redis::Script,
    remove: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    // The recovery records live with the bus (the same Redis): counted as its errors.
    crate::bus::redis::bus_error();
    StoreError::Unavailable(error.to_string())
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn value(owner: &str, record: &Record) -> Result<String, StoreError> {
    // Not through `unavailable`: a record that does not encode is no Redis error.
    let json = serde_json::to_string(record)
        .map_err(|error| StoreError::Unavailable(error.to_string()))?;
    Ok(format!("{owner}\n{json}"))
}

impl RedisStore {
    /// A store on an open connection (shared with the bus).
    pub fn on(conn: ConnectionManager) -> Self {
        Self {
            conn,
            update: redis::Script::new(UPDATE),
            remove: redis::Script::new(REMOVE),
        }
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn put(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(record_key(pid))
            .arg(value(owner, record)?)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn update(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let updated: i64 = self
            .update
            .key(record_key(pid))
            .arg(owner)
            .arg(value(owner, record)?)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(updated == 1)
    }

    async fn take(&self, pid: &str) -> Result<Option<Record>, StoreError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("GETDEL")
            .arg(record_key(pid))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(taken.and_then(|v| {
            let (_, json) = v.split_once('\n')?;
            serde_json::from_str(json).ok()
        }))
    }

    async fn touch(&self, pids: &[String], ttl: Duration) -> Result<(), StoreError> {
        if pids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for pid in pids {
            pipe.cmd("PEXPIRE")
                .arg(record_key(pid))
                .arg(millis(ttl))
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn remove(&self, pid: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.remove
            .key(record_key(pid))
            .arg(owner)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
