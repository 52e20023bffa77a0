//! Per-blade facts in the database: drains, loads, IP leases.

use rusqlite::{params, OptionalExtension, Transaction};

use super::containers::ACTIVE;
use super::{now, Store};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BladeLoad {
    pub containers: u32,
    pub running: u32,
    pub cpus_milli: u64,
    pub memory: u64,
    pub ports: u32,
    pub ips: u32,
    pub gpu_leases: u32,
    /// Runs waiting for room here: for GPUs, and for CPUs or memory.
    pub waiting_gpu: u32,
    pub waiting_other: u32,
}

impl Store {
    pub async fn drained(&self) -> anyhow::Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT blade FROM blade_drains ORDER BY blade")?;
            let v = st.query_map([], |r| r.get(0))?.collect();
            v
        })
        .await
    }

    pub async fn set_drained(&self, blade: &str, actor: &str, drained: bool) -> anyhow::Result<()> {
        let (b, a) = (blade.to_string(), actor.to_string());
        self.call(move |c| {
            if drained {
                c.execute(
                    "INSERT OR REPLACE INTO blade_drains(blade, actor, at) VALUES (?1, ?2, ?3)",
                    params![b, a, now()],
                )
            } else {
                c.execute("DELETE FROM blade_drains WHERE blade = ?1", [b])
            }
        })
        .await?;
        Ok(())
    }

    pub async fn blade_load(&self, blade: &str) -> anyhow::Result<BladeLoad> {
        let b = blade.to_string();
        self.call(move |c| {
            let (containers, running, cpus, memory): (u32, u32, i64, i64) = c.query_row(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM(state = 'running'), 0),
                            COALESCE(SUM(CASE WHEN state IN {ACTIVE} THEN cpus_milli END), 0),
                            COALESCE(SUM(CASE WHEN state IN {ACTIVE} THEN memory END), 0)
                     FROM containers WHERE blade = ?1"
                ),
                [&b],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            let ports = c.query_row(
                "SELECT COUNT(*) FROM port_leases WHERE blade = ?1 AND container_id IS NOT NULL",
                [&b],
                |r| r.get(0),
            )?;
            let ips = c.query_row(
                "SELECT COUNT(*) FROM ip_leases WHERE blade = ?1",
                [&b],
                |r| r.get(0),
            )?;
            let gpu_leases = c.query_row(
                "SELECT COUNT(*) FROM gpu_leases WHERE blade = ?1",
                [&b],
                |r| r.get(0),
            )?;
            let (waiting_gpu, waiting_other) = c.query_row(
                "SELECT COALESCE(SUM(gpus > 0), 0), COALESCE(SUM(gpus = 0), 0) FROM containers WHERE blade = ?1 AND state = 'waiting'",
                [&b],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(BladeLoad {
                containers,
                running,
                cpus_milli: cpus as u64,
                memory: memory as u64,
                ports,
                ips,
                gpu_leases,
                waiting_gpu,
                waiting_other,
            })
        })
        .await
    }

    /// Lease the first free address of a pool to a container, inside `tx`.
    pub fn lease_ip_tx(
        tx: &Transaction<'_>,
        blade: &str,
        hosts: &[std::net::Ipv4Addr],
        container_id: i64,
    ) -> rusqlite::Result<Option<String>> {
        let used: std::collections::HashSet<String> = {
            let mut st = tx.prepare("SELECT ip FROM ip_leases WHERE blade = ?1")?;
            let v = st
                .query_map([blade], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            v
        };
        let Some(ip) = hosts
            .iter()
            .map(|h| h.to_string())
            .find(|h| !used.contains(h))
        else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO ip_leases(blade, ip, container_id) VALUES (?1, ?2, ?3)",
            params![blade, ip, container_id],
        )?;
        Ok(Some(ip))
    }

    pub async fn ip_of(&self, container_id: i64) -> anyhow::Result<Option<String>> {
        self.call(move |c| {
            c.query_row(
                "SELECT ip FROM ip_leases WHERE container_id = ?1",
                [container_id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Who holds a pool's addresses: (ip, owner, container name).
    pub async fn ip_holders(&self, blade: &str) -> anyhow::Result<Vec<(String, String, String)>> {
        let b = blade.to_string();
        self.call(move |c| {
            let mut st = c.prepare("SELECT l.ip, c.owner, c.name FROM ip_leases l JOIN containers c ON c.id = l.container_id WHERE l.blade = ?1 ORDER BY l.ip")?;
            let v = st.query_map([b], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect();
            v
        })
        .await
    }

    /// All rows of a blade (for reconciliation), in one query.
    pub async fn containers_on(
        &self,
        blade: &str,
    ) -> anyhow::Result<Vec<super::containers::ContainerRow>> {
        self.containers_of_blade(blade, None).await
    }

    pub async fn container_states(&self, blade: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let b = blade.to_string();
        self.call(move |c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM containers WHERE blade = ?1 GROUP BY state ORDER BY state")?;
            let v = st.query_map([b], |r| Ok((r.get(0)?, r.get(1)?)))?.collect();
            v
        })
        .await
    }

    /// Is there a queued or running job for this container?
    pub async fn has_open_job(&self, container_id: i64) -> anyhow::Result<bool> {
        self.call(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM queue WHERE state IN ('queued','running') AND json_extract(payload, '$.container') = ?1",
                [container_id],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n > 0)
    }
}
