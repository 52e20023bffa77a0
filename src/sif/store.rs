//! The SIF store's bookkeeping: last use of each content file, pins held by
//! jobs, and least-recently-used eviction under a size bound.

use std::path::Path;

use rusqlite::params;

use crate::store::{now, Store};

impl Store {
    pub async fn sif_touch(&self, file: &str, size: u64) -> anyhow::Result<()> {
        let f = file.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT INTO sif_files(file, size, last_used) VALUES (?1, ?2, ?3) ON CONFLICT(file) DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
                params![f, size as i64, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// A job (or anything else) that must keep `file` until it unpins.
    pub async fn sif_pin(&self, file: &str, holder: &str) -> anyhow::Result<()> {
        let (f, h) = (file.to_string(), holder.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO sif_pins(file, holder) VALUES (?1, ?2)",
                [f, h],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn sif_unpin(&self, holder: &str) -> anyhow::Result<()> {
        let h = holder.to_string();
        self.call(move |c| c.execute("DELETE FROM sif_pins WHERE holder = ?1", [h]))
            .await?;
        Ok(())
    }

    /// Unpinned files, least recently used first, except `keep`: (file, size).
    async fn sif_candidates(&self, keep: &str) -> anyhow::Result<(u64, Vec<(String, u64)>)> {
        let k = keep.to_string();
        self.call(move |c| {
            let total: i64 = c.query_row("SELECT COALESCE(SUM(size), 0) FROM sif_files", [], |r| r.get(0))?;
            let mut st = c.prepare(
                "SELECT file, size FROM sif_files f WHERE file != ?1 AND NOT EXISTS (SELECT 1 FROM sif_pins p WHERE p.file = f.file) ORDER BY last_used, file",
            )?;
            let v = st.query_map([k], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<Result<Vec<_>, _>>()?;
            Ok((total as u64, v))
        })
        .await
    }

    async fn sif_forget(&self, file: &str) -> anyhow::Result<()> {
        let f = file.to_string();
        self.call(move |c| c.execute("DELETE FROM sif_files WHERE file = ?1", [f]))
            .await?;
        Ok(())
    }
}

/// The store's size bound: the configured one, or else half of the file system it lives on
/// (so conversions never fill the disk the database and homes may share). None: not known.
pub fn bound(dir: &Path, configured: Option<u64>) -> Option<u64> {
    if configured.is_some() {
        return configured;
    }
    fs_size(dir).map(|total| total / 2)
}

/// Total bytes of the file system holding `dir`.
pub fn fs_size(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

/// Remove least-recently-used, unpinned files until the store is within `max`
/// bytes; `keep` (the file just asked for) always stays. Returns what was removed.
pub async fn evict(db: &Store, dir: &Path, max: u64, keep: &str) -> anyhow::Result<Vec<String>> {
    let (mut total, candidates) = db.sif_candidates(keep).await?;
    let mut removed = Vec::new();
    for (file, size) in candidates {
        if total <= max {
            break;
        }
        remove(db, dir, &file).await?;
        total = total.saturating_sub(size);
        removed.push(file);
    }
    Ok(removed)
}

/// Remove one content file of the store, and every owner's link to it first, so nobody is
/// left with a dangling name.
pub async fn remove(db: &Store, dir: &Path, file: &str) -> anyhow::Result<()> {
    if let Ok(owners) = std::fs::read_dir(dir) {
        for o in owners.flatten() {
            if let Ok(links) = std::fs::read_dir(o.path()) {
                for l in links.flatten() {
                    let p = l.path();
                    if std::fs::read_link(&p)
                        .is_ok_and(|t| t.file_name().is_some_and(|n| n == file))
                    {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
    }
    match std::fs::remove_file(dir.join(file)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    db.sif_forget(file).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_half_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let total = fs_size(dir.path()).expect("statvfs of a temporary directory");
        assert!(total > 0);
        assert_eq!(bound(dir.path(), None), Some(total / 2));
        assert_eq!(bound(dir.path(), Some(1000)), Some(1000), "configured wins");
    }

    #[tokio::test]
    async fn lru_with_pins() {
        let db = Store::open_in_memory().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("alice")).unwrap();
        for (i, f) in ["a.sif", "b.sif", "c.sif", "d.sif"].iter().enumerate() {
            std::fs::write(dir.path().join(f), vec![0u8; 100]).unwrap();
            db.sif_touch(f, 100).await.unwrap();
            // Distinct times for a stable order.
            db.with(|c| {
                c.execute(
                    "UPDATE sif_files SET last_used = ?1 WHERE file = ?2",
                    params![i as i64, f],
                )
            })
            .unwrap();
        }
        std::os::unix::fs::symlink("../a.sif", dir.path().join("alice/app_1.sif")).unwrap();
        db.sif_pin("b.sif", "job:42").await.unwrap();
        let gone = evict(&db, dir.path(), 200, "d.sif").await.unwrap();
        // a (oldest) goes; b is pinned; c goes; d is the one asked for.
        assert_eq!(gone, vec!["a.sif", "c.sif"]);
        assert!(
            !dir.path().join("alice/app_1.sif").exists()
                && !dir.path().join("alice/app_1.sif").is_symlink(),
            "its owner link went with it"
        );
        assert!(dir.path().join("b.sif").exists() && dir.path().join("d.sif").exists());
        db.sif_unpin("job:42").await.unwrap();
        assert_eq!(
            evict(&db, dir.path(), 100, "d.sif").await.unwrap(),
            vec!["b.sif"]
        );
    }
}
