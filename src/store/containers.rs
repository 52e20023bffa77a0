//! Container rows and their port leases.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::Serialize;

use super::{now, Store};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerRow {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub blade: String,
    pub podman_name: String,
    pub podman_id: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub cpus_milli: u32,
    pub memory: u64,
    pub gpus: u32,
    pub private: bool,
    pub state: String,
    pub exit_code: Option<i32>,
    pub oom: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// When it last stopped (for removing stale stopped containers).
    pub stopped_at: Option<i64>,
    /// When it was last seen using CPU or GPU, and its CPU counter (ns) then.
    pub active_at: Option<i64>,
    pub cpu_seen: Option<i64>,
    /// When `cpu_seen` was sampled.
    pub sampled_at: Option<i64>,
    /// `/container extend`: not reclaimed before this.
    pub keep_until: Option<i64>,
    /// The last reclaim warning sent (`reason:deadline`), so each is sent once.
    pub warned: Option<String>,
    /// Asked for a pool address (`run --ip`): leased while it runs.
    pub wants_ip: bool,
    /// Waiting for room since.
    pub waiting_since: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortLease {
    pub port: u16,
    pub container_port: u16,
    pub proto: String,
}

pub(super) const COLS: &str = "id, owner, name, blade, podman_name, podman_id, image, command, env, cpus_milli, memory, gpus, private, state, exit_code, oom, created_at, started_at, expires_at, stopped_at, active_at, cpu_seen, keep_until, warned, wants_ip, waiting_since, sampled_at";

pub(super) fn row(r: &Row<'_>) -> rusqlite::Result<ContainerRow> {
    let command: String = r.get(7)?;
    let env: String = r.get(8)?;
    Ok(ContainerRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        blade: r.get(3)?,
        podman_name: r.get(4)?,
        podman_id: r.get(5)?,
        image: r.get(6)?,
        command: serde_json::from_str(&command).unwrap_or_default(),
        env: serde_json::from_str(&env).unwrap_or_default(),
        cpus_milli: r.get(9)?,
        memory: r.get::<_, i64>(10)? as u64,
        gpus: r.get(11)?,
        private: r.get(12)?,
        state: r.get(13)?,
        exit_code: r.get(14)?,
        oom: r.get(15)?,
        created_at: r.get(16)?,
        started_at: r.get(17)?,
        expires_at: r.get(18)?,
        stopped_at: r.get(19)?,
        active_at: r.get(20)?,
        cpu_seen: r.get(21)?,
        keep_until: r.get(22)?,
        warned: r.get(23)?,
        wants_ip: r.get(24)?,
        waiting_since: r.get(25)?,
        sampled_at: r.get(26)?,
    })
}

/// What a user holds now, for per-user totals (and for telling them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Holdings {
    pub containers: u32,
    pub cpus_milli: u32,
    pub memory: u64,
    pub gpus: u32,
    pub ports: u32,
}

pub struct NewContainer {
    pub owner: String,
    pub name: String,
    pub blade: String,
    pub podman_name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub cpus_milli: u32,
    pub memory: u64,
    pub gpus: u32,
    pub private: bool,
    pub state: &'static str,
    /// (container port, protocol) to publish.
    pub ports: Vec<(u16, String)>,
    /// Lease one of these addresses (`run --ip`).
    pub ip_hosts: Option<Vec<std::net::Ipv4Addr>>,
    /// A course's seat (`/course run`): counted against the course's limits, not the owner's.
    pub course: Option<String>,
}

#[derive(Debug, PartialEq)]
pub enum InsertError {
    NameTaken { state: String },
    NoPorts,
    NoIp,
}

/// States in which a container holds CPUs, memory and GPUs.
pub const ACTIVE: &str = "('pending','running','stopping')";

impl Store {
    pub fn holdings_tx(tx: &Transaction<'_>, owner: &str) -> rusqlite::Result<Holdings> {
        let (containers, cpus, memory, gpus): (u32, i64, i64, i64) = tx.query_row(
            &format!(
                "SELECT COUNT(*),
                        COALESCE(SUM(CASE WHEN state IN {ACTIVE} THEN cpus_milli END), 0),
                        COALESCE(SUM(CASE WHEN state IN {ACTIVE} THEN memory END), 0),
                        COALESCE(SUM(CASE WHEN state IN {ACTIVE} THEN gpus END), 0)
                 FROM containers WHERE owner = ?1 AND course IS NULL"
            ),
            [owner],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let ports: u32 = tx.query_row(
            "SELECT COUNT(*) FROM port_leases p JOIN containers c ON c.id = p.container_id WHERE c.owner = ?1 AND c.course IS NULL",
            [owner],
            |r| r.get(0),
        )?;
        Ok(Holdings {
            containers,
            cpus_milli: cpus as u32,
            memory: memory as u64,
            gpus: gpus as u32,
            ports,
        })
    }

    pub async fn holdings(&self, owner: &str) -> anyhow::Result<Holdings> {
        let owner = owner.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            Self::holdings_tx(&tx, &owner)
        })
        .await
    }

    /// Lease free host ports on a blade for a container, inside `tx`.
    pub fn lease_ports_tx(
        tx: &Transaction<'_>,
        blade: &str,
        range: [u16; 2],
        container_id: i64,
        wanted: &[(u16, String)],
    ) -> rusqlite::Result<bool> {
        let used: std::collections::HashSet<u16> = {
            let mut st = tx.prepare("SELECT port FROM port_leases WHERE blade = ?1")?;
            let v = st
                .query_map([blade], |r| r.get::<_, u16>(0))?
                .collect::<Result<_, _>>()?;
            v
        };
        let mut free = (range[0]..=range[1]).filter(|p| !used.contains(p));
        for (cport, proto) in wanted {
            let Some(p) = free.next() else {
                return Ok(false);
            };
            tx.execute(
                "INSERT INTO port_leases(blade, port, container_id, container_port, proto) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![blade, p, container_id, cport, proto],
            )?;
        }
        Ok(true)
    }

    /// Record a container and lease its ports in one transaction. `check`
    /// sees the owner's holdings first and may refuse (limits).
    pub async fn insert_container<E: Send + 'static>(
        &self,
        n: NewContainer,
        job: Option<super::queue::OwnedTask>,
        range: [u16; 2],
        check: impl FnOnce(&Holdings, &Transaction<'_>) -> Result<(), E> + Send + 'static,
    ) -> anyhow::Result<Result<ContainerRow, Result<InsertError, E>>> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(state) =
                tx.query_row("SELECT state FROM containers WHERE owner = ?1 AND name = ?2", params![n.owner, n.name], |r| r.get::<_, String>(0)).optional()?
            {
                return Ok(Err(Ok(InsertError::NameTaken { state })));
            }
            let h = Self::holdings_tx(&tx, &n.owner)?;
            if let Err(e) = check(&h, &tx) {
                return Ok(Err(Err(e)));
            }
            tx.execute(
                "INSERT INTO containers(owner, name, blade, podman_name, image, command, env, cpus_milli, memory, gpus, private, state, created_at, course, wants_ip, waiting_since)
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,CASE WHEN ?12 = 'waiting' THEN ?13 END)",
                params![
                    n.owner,
                    n.name,
                    n.blade,
                    n.podman_name,
                    n.image,
                    serde_json::to_string(&n.command).unwrap_or_default(),
                    serde_json::to_string(&n.env).unwrap_or_default(),
                    n.cpus_milli,
                    n.memory as i64,
                    n.gpus,
                    n.private,
                    n.state,
                    now(),
                    n.course,
                    n.ip_hosts.is_some()
                ],
            )?;
            let id = tx.last_insert_rowid();
            if !Self::lease_ports_tx(&tx, &n.blade, range, id, &n.ports)? {
                return Ok(Err(Ok(InsertError::NoPorts)));
            }
            if let Some(hosts) = &n.ip_hosts {
                if Self::lease_ip_tx(&tx, &n.blade, hosts, id)?.is_none() {
                    return Ok(Err(Ok(InsertError::NoIp)));
                }
            }
            // The work is queued in the same transaction: a crash leaves either both or neither.
            if let Some(mut j) = job {
                j.payload["container"] = serde_json::json!(id);
                super::queue::enqueue_tx(&tx, &j)?;
            }
            let r = tx.query_row(&format!("SELECT {COLS} FROM containers WHERE id = ?1"), [id], row)?;
            tx.commit()?;
            Ok(Ok(r))
        })
        .await
    }

    /// One row by a unique key: `clause` is the WHERE condition on `args`.
    async fn container_where(
        &self,
        clause: &'static str,
        args: Vec<rusqlite::types::Value>,
    ) -> anyhow::Result<Option<ContainerRow>> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLS} FROM containers WHERE {clause}"),
                rusqlite::params_from_iter(args),
                row,
            )
            .optional()
        })
        .await
    }

    pub async fn container(&self, id: i64) -> anyhow::Result<Option<ContainerRow>> {
        self.container_where("id = ?1", vec![id.into()]).await
    }

    pub async fn container_by_name(
        &self,
        owner: &str,
        name: &str,
    ) -> anyhow::Result<Option<ContainerRow>> {
        self.container_where(
            "owner = ?1 AND name = ?2",
            vec![owner.to_string().into(), name.to_string().into()],
        )
        .await
    }

    pub async fn container_by_podman_id(
        &self,
        blade: &str,
        podman_id: &str,
    ) -> anyhow::Result<Option<ContainerRow>> {
        self.container_where(
            "blade = ?1 AND podman_id = ?2",
            vec![blade.to_string().into(), podman_id.to_string().into()],
        )
        .await
    }

    /// `owners`: whose containers; `all`: include exited ones.
    pub async fn containers_of(
        &self,
        owners: Vec<String>,
        all: bool,
    ) -> anyhow::Result<Vec<ContainerRow>> {
        self.call(move |c| {
            let mut out = Vec::new();
            let mut st = c.prepare(&format!("SELECT {COLS} FROM containers WHERE owner = ?1 AND (?2 OR state != 'exited') ORDER BY owner, name"))?;
            for o in owners {
                for r in st.query_map(params![o, all], row)? {
                    out.push(r?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Rows of a blade, oldest first; `state`: only those in it.
    pub async fn containers_of_blade(
        &self,
        blade: &str,
        state: Option<&str>,
    ) -> anyhow::Result<Vec<ContainerRow>> {
        let (b, st) = (blade.to_string(), state.map(str::to_string));
        self.call(move |c| {
            let mut q = c.prepare(&format!("SELECT {COLS} FROM containers WHERE blade = ?1 AND (?2 IS NULL OR state = ?2) ORDER BY id"))?;
            let v = q.query_map(params![b, st], row)?.collect();
            v
        })
        .await
    }

    pub async fn containers_in_state(
        &self,
        blade: &str,
        state: &str,
    ) -> anyhow::Result<Vec<ContainerRow>> {
        self.containers_of_blade(blade, Some(state)).await
    }

    pub async fn expired_containers(&self) -> anyhow::Result<Vec<ContainerRow>> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {COLS} FROM containers WHERE state = 'running' AND expires_at IS NOT NULL AND expires_at <= ?1"))?;
            let v = st.query_map([now()], row)?.collect();
            v
        })
        .await
    }

    pub async fn ports_of(&self, id: i64) -> anyhow::Result<Vec<PortLease>> {
        self.call(move |c| {
            let mut st = c.prepare("SELECT port, container_port, proto FROM port_leases WHERE container_id = ?1 ORDER BY container_port, port")?;
            let v = st.query_map([id], |r| Ok(PortLease { port: r.get(0)?, container_port: r.get(1)?, proto: r.get(2)? }))?.collect();
            v
        })
        .await
    }

    /// Podman could not bind `port`: keep it out of use and lease another for the same container port.
    pub async fn replace_bad_port(
        &self,
        blade: &str,
        range: [u16; 2],
        port: u16,
    ) -> anyhow::Result<bool> {
        let b = blade.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let lease: Option<(i64, u16, String)> = tx
                .query_row("SELECT container_id, container_port, proto FROM port_leases WHERE blade = ?1 AND port = ?2", params![b, port], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((cid, cport, proto)) = lease else { return Ok(false) };
            tx.execute("UPDATE port_leases SET container_id = NULL, container_port = NULL, bad = 1 WHERE blade = ?1 AND port = ?2", params![b, port])?;
            let ok = Self::lease_ports_tx(&tx, &b, range, cid, &[(cport, proto)])?;
            if ok {
                tx.commit()?;
            }
            Ok(ok)
        })
        .await
    }

    pub async fn set_container_state(&self, id: i64, state: &str) -> anyhow::Result<()> {
        let s = state.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE containers SET state = ?1,
                        waiting_since = CASE WHEN ?1 = 'waiting' THEN COALESCE(waiting_since, ?3) END
                 WHERE id = ?2",
                params![s, id, now()],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn set_podman_id(&self, id: i64, podman_id: &str) -> anyhow::Result<()> {
        let p = podman_id.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE containers SET podman_id = ?1 WHERE id = ?2",
                params![p, id],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn mark_running(&self, id: i64, lifetime: Option<i64>) -> anyhow::Result<()> {
        self.call(move |c| {
            let t = now();
            c.execute(
                // A GPU deadline belongs to the grant's first start: a restart keeps it.
                "UPDATE containers SET state = 'running', started_at = ?1,
                        expires_at = CASE WHEN ?2 IS NULL THEN NULL ELSE COALESCE(expires_at, ?1 + ?2) END,
                        exit_code = NULL, oom = 0, stopped_at = NULL, active_at = ?1, cpu_seen = NULL,
                        warned = NULL, waiting_since = NULL WHERE id = ?3",
                params![t, lifetime, id],
            )
        })
        .await?;
        Ok(())
    }

    /// Move a stopped container to `pending` for a start, if its owner's running totals
    /// still allow it (`check` sees the holdings without it), in one transaction, so two
    /// starts cannot both pass the check. `Ok(Err(_))`: refused, nothing changed.
    pub async fn claim_start<E: Send + 'static>(
        &self,
        id: i64,
        owner: &str,
        check: impl FnOnce(&Holdings) -> Result<(), E> + Send + 'static,
    ) -> anyhow::Result<Result<(), E>> {
        let owner = owner.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let h = Self::holdings_tx(&tx, &owner)?;
            if let Err(e) = check(&h) {
                return Ok(Err(e));
            }
            tx.execute(
                "UPDATE containers SET state = 'pending' WHERE id = ?1",
                [id],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    /// A container stopped; `release_ip`: its pool address goes back to the pool now.
    pub async fn mark_exited(
        &self,
        id: i64,
        exit_code: Option<i32>,
        oom: bool,
        release_ip: bool,
    ) -> anyhow::Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE containers SET state = 'exited', exit_code = ?1, oom = ?2, stopped_at = ?4, warned = NULL WHERE id = ?3",
                params![exit_code, oom, id, now()],
            )?;
            if release_ip {
                tx.execute("DELETE FROM ip_leases WHERE container_id = ?1", [id])?;
            }
            tx.commit()
        })
        .await?;
        Ok(())
    }

    /// Give back the pool addresses of containers stopped before `before`.
    pub async fn release_stopped_ips(&self, before: i64) -> anyhow::Result<usize> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM ip_leases WHERE container_id IN
                   (SELECT id FROM containers WHERE state = 'exited' AND stopped_at <= ?1)",
                [before],
            )
        })
        .await
    }

    /// A pool address for a container starting again: the one it holds, or the first free.
    /// `None`: the pool is used up.
    pub async fn relase_ip(
        &self,
        id: i64,
        blade: &str,
        hosts: Vec<std::net::Ipv4Addr>,
    ) -> anyhow::Result<Option<(String, bool)>> {
        let b = blade.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if let Some(ip) = tx
                .query_row(
                    "SELECT ip FROM ip_leases WHERE container_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?
            {
                return Ok(Some((ip, false)));
            }
            let ip = Self::lease_ip_tx(&tx, &b, &hosts, id)?;
            tx.commit()?;
            Ok(ip.map(|ip| (ip, true)))
        })
        .await
    }

    /// The GPU devices a container holds in the local ledger.
    pub async fn gpus_of(&self, id: i64) -> anyhow::Result<Vec<String>> {
        self.call(move |c| {
            let mut st =
                c.prepare("SELECT gpu FROM gpu_leases WHERE container_id = ?1 ORDER BY gpu")?;
            let v = st.query_map([id], |r| r.get(0))?.collect();
            v
        })
        .await
    }

    /// Give back one container's pool address.
    pub async fn release_ip(&self, id: i64) -> anyhow::Result<()> {
        self.call(move |c| c.execute("DELETE FROM ip_leases WHERE container_id = ?1", [id]))
            .await?;
        Ok(())
    }

    /// Running and stopped containers, for the reclaim sweep.
    pub async fn reclaimable(&self) -> anyhow::Result<Vec<ContainerRow>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM containers WHERE state IN ('running', 'exited') ORDER BY id"
            ))?;
            let v = st.query_map([], row)?.collect();
            v
        })
        .await
    }

    /// Runs waiting for room since before `before`.
    pub async fn waits_older_than(&self, before: i64) -> anyhow::Result<Vec<ContainerRow>> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM containers WHERE state = 'waiting' AND waiting_since <= ?1 ORDER BY id"
            ))?;
            let v = st.query_map([before], row)?.collect();
            v
        })
        .await
    }

    /// A usage sample: the CPU counter now and, when it showed use, `active`.
    pub async fn record_sample(
        &self,
        id: i64,
        at: i64,
        cpu: Option<u64>,
        active: bool,
    ) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE containers SET sampled_at = ?2, cpu_seen = COALESCE(?3, cpu_seen),
                        active_at = CASE WHEN ?4 THEN ?2 ELSE active_at END WHERE id = ?1",
                params![id, at, cpu.map(|v| v as i64), active],
            )
        })
        .await?;
        Ok(())
    }

    /// A reclaim warning was sent (and, when it came late, the deadline moved).
    pub async fn set_warned(
        &self,
        id: i64,
        mark: &str,
        keep_until: Option<i64>,
    ) -> anyhow::Result<()> {
        let m = mark.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE containers SET warned = ?2, keep_until = COALESCE(?3, keep_until) WHERE id = ?1",
                params![id, m, keep_until],
            )
        })
        .await?;
        Ok(())
    }

    /// `/container extend`: not reclaimed before `until`.
    pub async fn set_keep_until(&self, id: i64, until: i64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE containers SET keep_until = ?2 WHERE id = ?1",
                params![id, until],
            )
        })
        .await?;
        Ok(())
    }

    /// An image was run on a blade (for pruning what nobody runs).
    pub async fn note_image_used(&self, blade: &str, image: &str, at: i64) -> anyhow::Result<()> {
        let (b, i) = (blade.to_string(), image.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO blade_images(blade, image, used_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (blade, image) DO UPDATE SET used_at = MAX(used_at, excluded.used_at)",
                params![b, i, at],
            )
        })
        .await?;
        Ok(())
    }

    /// When each image was last run on a blade, and the images its recorded containers use.
    pub async fn blade_image_use(
        &self,
        blade: &str,
    ) -> anyhow::Result<(std::collections::HashMap<String, i64>, Vec<String>)> {
        let b = blade.to_string();
        self.call(move |c| {
            let mut st = c.prepare("SELECT image, used_at FROM blade_images WHERE blade = ?1")?;
            let used = st
                .query_map([&b], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut st = c.prepare("SELECT DISTINCT image FROM containers WHERE blade = ?1")?;
            let held = st
                .query_map([&b], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((used, held))
        })
        .await
    }

    pub async fn forget_blade_image(&self, blade: &str, image: &str) -> anyhow::Result<()> {
        let (b, i) = (blade.to_string(), image.to_string());
        self.call(move |c| {
            c.execute(
                "DELETE FROM blade_images WHERE blade = ?1 AND image = ?2",
                params![b, i],
            )
        })
        .await?;
        Ok(())
    }

    /// Forget a container; its port and GPU leases go with it (ON DELETE CASCADE).
    pub async fn delete_container(&self, id: i64) -> anyhow::Result<()> {
        self.call(move |c| c.execute("DELETE FROM containers WHERE id = ?1", [id]))
            .await?;
        Ok(())
    }

    /// Position (1-based) of a waiting container in its blade's queue.
    pub async fn waiting_position(&self, id: i64) -> anyhow::Result<u32> {
        self.call(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM containers w, containers me WHERE me.id = ?1 AND w.blade = me.blade AND w.state = 'waiting' AND w.id <= me.id",
                [id],
                |r| r.get(0),
            )
        })
        .await
    }
}
