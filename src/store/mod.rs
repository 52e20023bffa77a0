//! SQLite state: one connection in WAL mode with a busy timeout, used from
//! blocking threads so the async runtime never waits on disk.

pub mod audit;
pub mod blades;
pub mod containers;
pub mod courses;
pub mod gitlab;
pub mod images;
pub mod jobs;
pub mod migrations;
pub mod outbox;
pub mod queue;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // The database holds the SIF link key and live response URLs: shisa's alone. SQLite
        // gives its -wal and -shm files the database file's mode, so it is made 0600 first.
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            let mut names = vec![path.to_path_buf()];
            for suffix in ["-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                names.push(p.into());
            }
            for p in names.iter().filter(|p| p.exists()) {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        let mut conn = Connection::open(path)?;
        Self::prepare(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn open_in_memory() -> anyhow::Result<Store> {
        let mut conn = Connection::open_in_memory()?;
        Self::prepare(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn prepare(conn: &mut Connection) -> anyhow::Result<()> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrations().to_latest(conn)?;
        Ok(())
    }

    /// Run `f` on the connection in a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await?
        .map_err(Into::into)
    }

    /// Synchronous access, for the CLI and tests.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(Into::into)
    }

    pub async fn link_of(&self, mm_user_id: &str) -> anyhow::Result<Option<String>> {
        let id = mm_user_id.to_string();
        self.call(move |c| {
            c.query_row("SELECT uid FROM links WHERE mm_user_id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    pub async fn link(
        &self,
        mm_user_id: &str,
        uid: &str,
        mm_username: &str,
        mode: &str,
    ) -> anyhow::Result<()> {
        let (a, b, c_, d) = (
            mm_user_id.to_string(),
            uid.to_string(),
            mm_username.to_string(),
            mode.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO links(mm_user_id, uid, mm_username, mode, linked_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(mm_user_id) DO UPDATE SET mm_username = excluded.mm_username",
                rusqlite::params![a, b, c_, d, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// The Mattermost user id linked to an account, for direct messages.
    pub async fn mm_user_of(&self, uid: &str) -> anyhow::Result<Option<String>> {
        let uid = uid.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT mm_user_id FROM links WHERE uid = ?1 ORDER BY linked_at DESC LIMIT 1",
                [uid],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Count one use of a `response_url`; false if it is used up or expired
    /// (Mattermost: 5 uses within 30 minutes).
    pub async fn take_response_url(&self, url: &str) -> anyhow::Result<bool> {
        let url = url.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now();
            tx.execute(
                "INSERT OR IGNORE INTO response_urls(url, first_seen, uses) VALUES (?1, ?2, 0)",
                rusqlite::params![url, now],
            )?;
            let (first, uses): (i64, i64) = tx.query_row(
                "SELECT first_seen, uses FROM response_urls WHERE url = ?1",
                [&url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // Keep a margin on the 30 minutes: a post in flight at 29:59 would be refused.
            let ok = uses < 5 && now - first < 29 * 60;
            if ok {
                tx.execute(
                    "UPDATE response_urls SET uses = uses + 1 WHERE url = ?1",
                    [&url],
                )?;
            }
            tx.execute(
                "DELETE FROM response_urls WHERE first_seen < ?1",
                [now - 3600],
            )?;
            tx.commit()?;
            Ok(ok)
        })
        .await
    }

    /// Note when Mattermost first handed us a response_url (at the request).
    pub async fn register_response_url(&self, url: &str) -> anyhow::Result<()> {
        let url = url.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO response_urls(url, first_seen, uses) VALUES (?1, ?2, 0)",
                rusqlite::params![url, now()],
            )
        })
        .await?;
        Ok(())
    }
}

impl Store {
    /// This installation's id: 12 hex digits made once and kept in the database.
    /// It goes on everything shisa leaves on a blade (container labels, build
    /// cgroups), so two instances sharing a blade never take each other's things.
    pub fn instance_id(&self) -> anyhow::Result<String> {
        let mut raw = [0u8; 6];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let fresh = hex::encode(raw);
        self.with(move |c| kv_first(c, "instance_id", &fresh))
    }

    /// A named secret, generated (32 random bytes, hex) the first time it is asked for.
    pub async fn service_secret(&self, key: &str) -> anyhow::Result<String> {
        let k = key.to_string();
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let fresh = hex::encode(raw);
        self.call(move |c| kv_first(c, &k, &fresh)).await
    }
}

/// The value kept under `key`, set to `fresh` if there is none yet (the first writer wins).
fn kv_first(c: &Connection, key: &str, fresh: &str) -> rusqlite::Result<String> {
    c.execute(
        "INSERT OR IGNORE INTO kv(key, value) VALUES (?1, ?2)",
        [key, fresh],
    )?;
    c.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
}
