//! Who gets the blades' GPUs. Behind a trait: this is the local ledger (a
//! blade that is not a Slurm node); the Slurm issue adds one where Slurm owns them.

use async_trait::async_trait;
use rusqlite::params;

use crate::config::Blade;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// CDI device names, e.g. `nvidia.com/gpu=0`.
    pub devices: Vec<String>,
    /// True if a granted GPU is shared with other containers.
    pub shared: bool,
}

#[async_trait]
pub trait Allocator: Send + Sync {
    /// How many containers asking for one GPU could start now.
    async fn free(&self, blade: &Blade) -> anyhow::Result<u32>;
    /// Lease `count` GPUs to a container; `None` if they are not free now.
    async fn grant(
        &self,
        blade: &Blade,
        container_id: i64,
        count: u32,
    ) -> anyhow::Result<Option<Grant>>;
    /// Give back whatever the container holds.
    async fn release(&self, container_id: i64) -> anyhow::Result<()>;
    /// For an allocator with a queue of its own (Slurm): whether a waiting container's
    /// allocation has started. `None`: no queue of its own; count free GPUs instead.
    async fn ready(&self, _container_id: i64) -> anyhow::Result<Option<bool>> {
        Ok(None)
    }
}

pub struct LocalAllocator {
    pub store: Store,
}

fn loads(c: &rusqlite::Connection, blade: &Blade) -> rusqlite::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    for g in &blade.gpus {
        let n: u32 = c.query_row(
            "SELECT COUNT(*) FROM gpu_leases WHERE blade = ?1 AND gpu = ?2",
            params![blade.name, g],
            |r| r.get(0),
        )?;
        out.push((g.clone(), n));
    }
    Ok(out)
}

#[async_trait]
impl Allocator for LocalAllocator {
    async fn free(&self, blade: &Blade) -> anyhow::Result<u32> {
        let b = blade.clone();
        self.store
            .call(move |c| {
                Ok(loads(c, &b)?
                    .iter()
                    .map(|(_, n)| b.gpu_share.saturating_sub(*n))
                    .sum())
            })
            .await
    }

    async fn grant(
        &self,
        blade: &Blade,
        container_id: i64,
        count: u32,
    ) -> anyhow::Result<Option<Grant>> {
        let b = blade.clone();
        self.store
            .call(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                // Idempotent: a retried job keeps what it already has.
                let mut have: Vec<String> = {
                    let mut st = tx.prepare(
                        "SELECT gpu FROM gpu_leases WHERE container_id = ?1 ORDER BY gpu",
                    )?;
                    let v = st
                        .query_map([container_id], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    v
                };
                let mut l = loads(&tx, &b)?;
                // Least loaded first, so shared GPUs fill evenly; ties by index order.
                l.sort_by_key(|(_, n)| *n);
                for (g, n) in l {
                    if have.len() as u32 >= count {
                        break;
                    }
                    if n < b.gpu_share && !have.contains(&g) {
                        tx.execute(
                            "INSERT INTO gpu_leases(blade, gpu, container_id) VALUES (?1, ?2, ?3)",
                            params![b.name, g, container_id],
                        )?;
                        have.push(g);
                    }
                }
                if (have.len() as u32) < count {
                    return Ok(None); // dropping tx rolls the partial lease back
                }
                let shared = b.gpu_share > 1
                    && have.iter().any(|g| {
                        tx.query_row(
                            "SELECT COUNT(*) FROM gpu_leases WHERE blade = ?1 AND gpu = ?2",
                            params![b.name, g],
                            |r| r.get::<_, u32>(0),
                        )
                        .unwrap_or(0)
                            > 1
                    });
                tx.commit()?;
                have.sort();
                Ok(Some(Grant {
                    devices: have.iter().map(|g| format!("{}={g}", b.gpu_kind)).collect(),
                    shared,
                }))
            })
            .await
    }

    async fn release(&self, container_id: i64) -> anyhow::Result<()> {
        self.store
            .call(move |c| {
                c.execute(
                    "DELETE FROM gpu_leases WHERE container_id = ?1",
                    [container_id],
                )
            })
            .await?;
        Ok(())
    }
}
