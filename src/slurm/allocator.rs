//! Slurm as the ledger of the blades' GPUs (when the blades are Slurm nodes):
//! a GPU container holds its GPUs through a holder allocation submitted as
//! its owner, with the container's CPUs, memory and GPU lifetime, on the
//! container's blade. Slurm picks the GPU indexes (`gres_detail` IDX) and the
//! container gets exactly those CDI devices; a request Slurm cannot place
//! waits in Slurm's queue; removing the container cancels the allocation.
//! Jobs and containers then share the GPUs without double booking.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{Scheduler, Submit};
use crate::config::Blade;
use crate::gpus::{Allocator, Grant};
use crate::identity::directory::Directory;
use crate::store::Store;

pub struct SlurmAllocator {
    pub store: Store,
    pub slurm: Arc<dyn Scheduler>,
    pub directory: Arc<dyn Directory>,
    /// Minutes a holder lasts, by role (the role's GPU lifetime).
    pub lifetimes: HashMap<String, u64>,
    pub partition: Option<String>,
    /// This installation's id, in holder jobs' comments.
    pub instance: String,
}

fn node(blade: &Blade) -> String {
    blade
        .slurm_node
        .clone()
        .unwrap_or_else(|| blade.name.clone())
}

impl Store {
    pub async fn gpu_holder(&self, container_id: i64) -> anyhow::Result<Option<u64>> {
        self.call(move |c| {
            c.query_row(
                "SELECT slurm_id FROM gpu_holders WHERE container_id = ?1",
                [container_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|v| v as u64))
        })
        .await
    }

    pub async fn set_gpu_holder(
        &self,
        container_id: i64,
        slurm_id: u64,
        blade: &str,
    ) -> anyhow::Result<()> {
        let b = blade.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO gpu_holders(container_id, slurm_id, blade) VALUES (?1, ?2, ?3)",
                params![container_id, slurm_id as i64, b],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn take_gpu_holder(&self, container_id: i64) -> anyhow::Result<Option<u64>> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id = tx
                .query_row(
                    "SELECT slurm_id FROM gpu_holders WHERE container_id = ?1",
                    [container_id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            tx.execute(
                "DELETE FROM gpu_holders WHERE container_id = ?1",
                [container_id],
            )?;
            tx.commit()?;
            Ok(id.map(|v| v as u64))
        })
        .await
    }

    /// (container, holder) for every container holding GPUs through Slurm.
    pub async fn gpu_holders(&self) -> anyhow::Result<Vec<(i64, u64)>> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT container_id, slurm_id FROM gpu_holders ORDER BY container_id")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }
}

#[async_trait]
impl Allocator for SlurmAllocator {
    async fn free(&self, blade: &Blade) -> anyhow::Result<u32> {
        let (total, used) = self.slurm.node_gpus(&node(blade)).await?;
        Ok(total.saturating_sub(used))
    }

    async fn grant(
        &self,
        blade: &Blade,
        container_id: i64,
        count: u32,
    ) -> anyhow::Result<Option<Grant>> {
        let holder = match self.store.gpu_holder(container_id).await? {
            Some(h) => h,
            None => {
                let row = self
                    .store
                    .container(container_id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("container {container_id} is gone"))?;
                let owner = self
                    .directory
                    .lookup(&row.owner)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no account {}", row.owner))?;
                let minutes = self
                    .lifetimes
                    .get(owner.role.as_str())
                    .copied()
                    .unwrap_or(24 * 60);
                let submit = Submit {
                    uid: owner.uid_number,
                    gid: owner.gid_number,
                    name: format!("shisa-container-{}", row.name),
                    partition: self.partition.clone(),
                    cpus: row.cpus_milli.div_ceil(1000).max(1),
                    memory_mb: (row.memory / (1024 * 1024)).max(16),
                    time_minutes: minutes,
                    gpus: Some((None, count)),
                    output: "/dev/null".into(),
                    workdir: "/".into(),
                    nodelist: Some(node(blade)),
                    comment: format!("shisa:{}:container:{container_id}", self.instance),
                    // Our own fixed text: the allocation only holds the GPUs.
                    script: "#!/bin/sh\n# Holds GPUs for a shisa container; cancelled when it is removed.\nexec sleep 2147483647\n".into(),
                };
                // A holder an earlier attempt submitted (then crashed) is adopted, not doubled.
                let id = match self.slurm.find(&submit.comment).await? {
                    Some((id, st))
                        if matches!(st.as_str(), "PENDING" | "RUNNING" | "CONFIGURING") =>
                    {
                        id
                    }
                    _ => self.slurm.submit(&submit).await?,
                };
                self.store
                    .set_gpu_holder(container_id, id, &blade.name)
                    .await?;
                id
            }
        };
        // A fresh allocation is scheduled within moments unless it must wait for resources.
        let mut states = self.slurm.states(&[holder]).await?;
        for _ in 0..20 {
            match states.get(&holder) {
                Some(s)
                    if s.state == "PENDING"
                        && matches!(s.reason.as_str(), "None" | "" | "Priority") =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    states = self.slurm.states(&[holder]).await?;
                }
                _ => break,
            }
        }
        match states.get(&holder) {
            Some(s) if s.state == "RUNNING" && s.gpu_idx.len() as u32 >= count => Ok(Some(Grant {
                devices: s
                    .gpu_idx
                    .iter()
                    .map(|i| {
                        let name = blade
                            .gpus
                            .get(*i as usize)
                            .cloned()
                            .unwrap_or_else(|| i.to_string());
                        format!("{}={name}", blade.gpu_kind)
                    })
                    .collect(),
                shared: false,
            })),
            Some(s) if !s.finished() => Ok(None),
            // The allocation ended before the container started: ask again next time.
            _ => {
                self.store.take_gpu_holder(container_id).await?;
                Ok(None)
            }
        }
    }

    async fn release(&self, container_id: i64) -> anyhow::Result<()> {
        if let Some(h) = self.store.take_gpu_holder(container_id).await? {
            match self.slurm.cancel(h).await {
                Ok(()) => {}
                Err(super::SlurmError::Refused(e)) => {
                    tracing::info!(holder = h, error = %e, "holder already gone")
                }
                Err(e) => {
                    // Keep the record so the next release (or reconciliation) cancels it.
                    if let Ok(Some(row)) = self.store.container(container_id).await {
                        self.store
                            .set_gpu_holder(container_id, h, &row.blade)
                            .await?;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    async fn ready(&self, container_id: i64) -> anyhow::Result<Option<bool>> {
        let Some(h) = self.store.gpu_holder(container_id).await? else {
            return Ok(Some(true)); // no holder yet: let the run job submit one
        };
        let st = self.slurm.states(&[h]).await?;
        Ok(Some(
            st.get(&h)
                .is_none_or(|s| s.state == "RUNNING" || s.finished()),
        ))
    }
}
