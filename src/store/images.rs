//! Registry image records, sharing, personal registry tokens.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, Store};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageRow {
    pub repository: String,
    pub tag: String,
    pub owner: String,
    pub digest: String,
    pub size: u64,
    pub pushed_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub id: i64,
    pub owner: String,
    pub created_at: i64,
    pub last_used: Option<i64>,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
}

fn image(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        repository: r.get(0)?,
        tag: r.get(1)?,
        owner: r.get(2)?,
        digest: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        pushed_at: r.get(5)?,
    })
}

const ICOLS: &str = "repository, tag, owner, digest, size, pushed_at";

impl Store {
    pub async fn upsert_image(&self, i: ImageRow) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO images(repository, tag, owner, digest, size, pushed_at) VALUES (?1,?2,?3,?4,?5,?6)
                 ON CONFLICT(repository, tag) DO UPDATE SET digest = excluded.digest, size = excluded.size, pushed_at = excluded.pushed_at
                 WHERE images.digest != excluded.digest OR images.size != excluded.size",
                params![i.repository, i.tag, i.owner, i.digest, i.size as i64, i.pushed_at],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn delete_image_digest(
        &self,
        repository: &str,
        digest: &str,
    ) -> anyhow::Result<usize> {
        let (r, d) = (repository.to_string(), digest.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM images WHERE repository = ?1 AND digest = ?2",
                [r, d],
            )
        })
        .await
    }

    pub async fn delete_image_tag(&self, repository: &str, tag: &str) -> anyhow::Result<usize> {
        let (r, t) = (repository.to_string(), tag.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM images WHERE repository = ?1 AND tag = ?2",
                [r, t],
            )
        })
        .await
    }

    pub async fn all_images(&self) -> anyhow::Result<Vec<ImageRow>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ICOLS} FROM images ORDER BY repository, tag"
            ))?;
            let v = st.query_map([], image)?.collect();
            v
        })
        .await
    }

    pub async fn images_of(&self, owner: &str) -> anyhow::Result<Vec<ImageRow>> {
        let o = owner.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {ICOLS} FROM images WHERE owner = ?1 ORDER BY repository, tag"
            ))?;
            let v = st.query_map([o], image)?.collect();
            v
        })
        .await
    }

    pub async fn image(&self, repository: &str, tag: &str) -> anyhow::Result<Option<ImageRow>> {
        let (r, t) = (repository.to_string(), tag.to_string());
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {ICOLS} FROM images WHERE repository = ?1 AND tag = ?2"),
                [r, t],
                image,
            )
            .optional()
        })
        .await
    }

    pub async fn repository_exists(&self, repository: &str) -> anyhow::Result<bool> {
        let r = repository.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM images WHERE repository = ?1",
                [r],
                |x| x.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n > 0)
    }

    /// Registry bytes a user uses: each image (digest) counted once, and each uploaded layer
    /// no image of theirs holds yet.
    pub async fn registry_usage(&self, owner: &str) -> anyhow::Result<u64> {
        let o = owner.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT (SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT digest, size FROM images WHERE owner = ?1))
                      + (SELECT COALESCE(SUM(size), 0) FROM (SELECT digest, MAX(size) AS size FROM registry_uploads WHERE owner = ?1 GROUP BY digest))",
                [o],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as u64)
    }

    /// A layer landed in `repository` (a blob push or mount notification).
    pub async fn record_upload(
        &self,
        repository: &str,
        digest: &str,
        owner: &str,
        size: u64,
    ) -> anyhow::Result<()> {
        let (r, d, o) = (
            repository.to_string(),
            digest.to_string(),
            owner.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO registry_uploads(repository, digest, owner, size, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r, d, o, size as i64, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// An image of `owner`'s holds these layers: they count with the image from now on.
    pub async fn claim_uploads(&self, owner: &str, digests: Vec<String>) -> anyhow::Result<()> {
        let o = owner.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            for d in &digests {
                tx.execute(
                    "DELETE FROM registry_uploads WHERE owner = ?1 AND digest = ?2",
                    params![o, d],
                )?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn forget_upload(&self, repository: &str, digest: &str) -> anyhow::Result<()> {
        let (r, d) = (repository.to_string(), digest.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM registry_uploads WHERE repository = ?1 AND digest = ?2",
                [r, d],
            )
        })
        .await?;
        Ok(())
    }

    /// Uploads older than `before` still in no image: (repository, digest, owner).
    pub async fn stale_uploads(
        &self,
        before: i64,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT repository, digest, owner FROM registry_uploads WHERE at < ?1 ORDER BY owner, repository, digest",
            )?;
            let v = st
                .query_map([before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    pub async fn share(&self, repository: &str, owner: &str, grantee: &str) -> anyhow::Result<()> {
        let (r, o, g) = (
            repository.to_string(),
            owner.to_string(),
            grantee.to_string(),
        );
        self.call(move |c| c.execute("INSERT OR IGNORE INTO shares(repository, owner, grantee, created_at) VALUES (?1,?2,?3,?4)", params![r, o, g, now()]))
            .await?;
        Ok(())
    }

    /// Record why `readers` (name, uid) may read a SIF content file: through `repo`.
    pub async fn add_sif_readers(
        &self,
        file: &str,
        repo: &str,
        readers: Vec<(String, u32)>,
    ) -> anyhow::Result<()> {
        let (f, r) = (file.to_string(), repo.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            for (name, uid) in readers {
                tx.execute(
                    "INSERT OR IGNORE INTO sif_readers(file, reader, uid, repo) VALUES (?1, ?2, ?3, ?4)",
                    params![f, name, uid, r],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// A repository is gone: every claim through it goes. Each file it touched, with the uids
    /// still entitled to it and whether a job pins it.
    pub async fn drop_repo_sif_claims(
        &self,
        repo: &str,
    ) -> anyhow::Result<Vec<(String, Vec<u32>, bool)>> {
        let r = repo.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let files: Vec<String> = {
                let mut st = tx.prepare("SELECT DISTINCT file FROM sif_readers WHERE repo = ?1")?;
                let v = st
                    .query_map([&r], |x| x.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            tx.execute("DELETE FROM sif_readers WHERE repo = ?1", [&r])?;
            let mut out = Vec::new();
            for f in files {
                let uids = {
                    let mut st = tx.prepare(
                        "SELECT DISTINCT uid FROM sif_readers WHERE file = ?1 ORDER BY uid",
                    )?;
                    let v = st
                        .query_map([&f], |x| x.get::<_, u32>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    v
                };
                // Pins name the content file by its name in the store.
                let name = std::path::Path::new(&f)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let pinned: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM sif_pins WHERE file = ?1 OR file = ?2)",
                    params![f, name],
                    |x| x.get(0),
                )?;
                out.push((f, uids, pinned));
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Who holds claims to SIF files through `repo`.
    pub async fn sif_claimants(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let r = repo.to_string();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT DISTINCT reader FROM sif_readers WHERE repo = ?1 ORDER BY reader",
            )?;
            let v = st
                .query_map([&r], |x| x.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    /// Drop the claims that came through `repo` for `grantee` (None: everyone but `owner`):
    /// each file they touched, with the uids still entitled to read it.
    pub async fn drop_sif_claims(
        &self,
        repo: &str,
        grantee: Option<&str>,
        owner: &str,
    ) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
        let (r, g, o) = (
            repo.to_string(),
            grantee.map(str::to_string),
            owner.to_string(),
        );
        self.call(move |c| {
            let tx = c.transaction()?;
            let files: Vec<String> = {
                let mut st = tx.prepare(
                    "SELECT DISTINCT file FROM sif_readers WHERE repo = ?1 AND reader != ?3 AND (?2 IS NULL OR reader = ?2)",
                )?;
                let v = st
                    .query_map(params![r, g, o], |x| x.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                v
            };
            tx.execute(
                "DELETE FROM sif_readers WHERE repo = ?1 AND reader != ?3 AND (?2 IS NULL OR reader = ?2)",
                params![r, g, o],
            )?;
            let mut out = Vec::new();
            for f in files {
                let mut st =
                    tx.prepare("SELECT DISTINCT uid FROM sif_readers WHERE file = ?1 ORDER BY uid")?;
                let uids = st
                    .query_map([&f], |x| x.get::<_, u32>(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                drop(st);
                out.push((f, uids));
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    pub async fn unshare(&self, repository: &str, grantee: Option<&str>) -> anyhow::Result<usize> {
        let (r, g) = (repository.to_string(), grantee.map(str::to_string));
        self.call(move |c| {
            c.execute(
                "DELETE FROM shares WHERE repository = ?1 AND (?2 IS NULL OR grantee = ?2)",
                params![r, g],
            )
        })
        .await
    }

    pub async fn shared_with_of(&self, repository: &str) -> anyhow::Result<Vec<String>> {
        let r = repository.to_string();
        self.call(move |c| {
            let mut st =
                c.prepare("SELECT grantee FROM shares WHERE repository = ?1 ORDER BY grantee")?;
            let v = st.query_map([r], |x| x.get(0))?.collect();
            v
        })
        .await
    }

    /// Repositories shared with a user (directly, through a group, or with all).
    pub async fn shared_repositories(
        &self,
        uid: &str,
        groups: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut who = vec![uid.to_string(), "all".to_string()];
        who.extend(groups.iter().cloned());
        self.call(move |c| {
            let mut out = Vec::new();
            let mut st = c.prepare("SELECT DISTINCT repository FROM shares WHERE grantee = ?1")?;
            for w in &who {
                for r in st.query_map([w], |x| x.get::<_, String>(0))? {
                    out.push(r?);
                }
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
        .await
    }

    pub async fn set_description(&self, repository: &str, description: &str) -> anyhow::Result<()> {
        let (r, d) = (repository.to_string(), description.to_string());
        self.call(move |c| c.execute("INSERT OR REPLACE INTO image_descriptions(repository, description) VALUES (?1, ?2)", [r, d])).await?;
        Ok(())
    }

    pub async fn description(&self, repository: &str) -> anyhow::Result<Option<String>> {
        let r = repository.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT description FROM image_descriptions WHERE repository = ?1",
                [r],
                |x| x.get(0),
            )
            .optional()
        })
        .await
    }

    /// A new token valid for `seconds`, unless the owner already holds `max` live ones
    /// (counted in the same transaction): `Ok(id)` or `Err(held)`.
    pub async fn new_registry_token(
        &self,
        owner: &str,
        hash: &str,
        seconds: u64,
        max: u32,
    ) -> anyhow::Result<Result<i64, u32>> {
        let (o, h) = (owner.to_string(), hash.to_string());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let t = now();
            let held: u32 = tx.query_row(
                "SELECT COUNT(*) FROM registry_tokens WHERE owner = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
                params![o, t],
                |r| r.get(0),
            )?;
            if held >= max {
                return Ok(Err(held));
            }
            tx.execute(
                "INSERT INTO registry_tokens(owner, hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![o, h, t, t + seconds as i64],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ok(id))
        })
        .await
    }

    /// (owner, hash) of a live token.
    pub async fn registry_token(&self, id: i64) -> anyhow::Result<Option<(String, String)>> {
        self.call(move |c| {
            c.query_row(
                "SELECT owner, hash FROM registry_tokens WHERE id = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
                params![id, now()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .await
    }

    pub async fn touch_registry_token(&self, id: i64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE registry_tokens SET last_used = ?1 WHERE id = ?2",
                params![now(), id],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn registry_tokens_of(&self, owner: &str) -> anyhow::Result<Vec<TokenRow>> {
        let o = owner.to_string();
        self.call(move |c| {
            let mut st = c.prepare("SELECT id, owner, created_at, last_used, revoked_at, expires_at FROM registry_tokens WHERE owner = ?1 ORDER BY id")?;
            let v = st
                .query_map([o], |r| Ok(TokenRow { id: r.get(0)?, owner: r.get(1)?, created_at: r.get(2)?, last_used: r.get(3)?, revoked_at: r.get(4)?, expires_at: r.get(5)? }))?
                .collect();
            v
        })
        .await
    }

    pub async fn revoke_registry_token(&self, owner: &str, id: i64) -> anyhow::Result<bool> {
        let o = owner.to_string();
        self.call(move |c| c.execute("UPDATE registry_tokens SET revoked_at = ?1 WHERE id = ?2 AND owner = ?3 AND revoked_at IS NULL", params![now(), id, o]))
            .await
            .map(|n| n > 0)
    }

    /// True the first time an event id is seen.
    pub async fn first_registry_event(&self, id: &str) -> anyhow::Result<bool> {
        let i = id.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO registry_events(id, at) VALUES (?1, ?2)",
                params![i, now()],
            )
        })
        .await
        .map(|n| n == 1)
    }
}
