//! Slurm jobs shisa submitted: who owns them, where their files are, what
//! Slurm last said, and whether their owner has been told of the end.

use rusqlite::{params, OptionalExtension};

use super::{now, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub slurm_id: u64,
    pub owner: String,
    pub name: String,
    pub image: String,
    pub sif: String,
    pub dir: String,
    pub gpus: String,
    pub state: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub submitted_at: i64,
    pub start_time: i64,
    pub end_time: i64,
    pub node: String,
    pub done: bool,
}

const COLS: &str = "slurm_id, owner, name, image, sif, dir, gpus, state, reason, exit_code, submitted_at, start_time, end_time, node, done";

fn row(r: &rusqlite::Row) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        slurm_id: r.get::<_, i64>(0)? as u64,
        owner: r.get(1)?,
        name: r.get(2)?,
        image: r.get(3)?,
        sif: r.get(4)?,
        dir: r.get(5)?,
        gpus: r.get(6)?,
        state: r.get(7)?,
        reason: r.get(8)?,
        exit_code: r.get(9)?,
        submitted_at: r.get(10)?,
        start_time: r.get(11)?,
        end_time: r.get(12)?,
        node: r.get(13)?,
        done: r.get::<_, i64>(14)? != 0,
    })
}

impl Store {
    /// Record a submitted job and pin its SIF, in one transaction.
    pub async fn insert_job(&self, j: JobRow) -> anyhow::Result<()> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                &format!("INSERT OR IGNORE INTO jobs({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,0)"),
                params![j.slurm_id as i64, j.owner, j.name, j.image, j.sif, j.dir, j.gpus, j.state, j.reason, j.exit_code, now(), j.start_time, j.end_time, j.node],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO sif_pins(file, holder) VALUES (?1, ?2)",
                params![j.sif, format!("job:{}", j.slurm_id)],
            )?;
            tx.commit()
        })
        .await?;
        Ok(())
    }

    pub async fn job(&self, slurm_id: u64) -> anyhow::Result<Option<JobRow>> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLS} FROM jobs WHERE slurm_id = ?1"),
                [slurm_id as i64],
                row,
            )
            .optional()
        })
        .await
    }

    /// A user's jobs, newest first: unfinished ones, or all with `all`.
    pub async fn jobs_of(&self, owner: &str, all: bool) -> anyhow::Result<Vec<JobRow>> {
        let o = owner.to_string();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM jobs WHERE owner = ?1 AND (?2 OR done = 0) ORDER BY slurm_id DESC LIMIT 50"
            ))?;
            let v = st.query_map(params![o, all], row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    /// Jobs whose end has not been handled yet.
    pub async fn open_jobs(&self) -> anyhow::Result<Vec<JobRow>> {
        self.call(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM jobs WHERE done = 0 ORDER BY slurm_id"
            ))?;
            let v = st.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(v)
        })
        .await
    }

    pub async fn update_job(&self, id: u64, st: &JobState) -> anyhow::Result<()> {
        let s = st.clone();
        self.call(move |c| {
            c.execute(
                "UPDATE jobs SET state = ?2, reason = ?3, start_time = ?4, end_time = ?5, node = ?6, exit_code = COALESCE(?7, exit_code) WHERE slurm_id = ?1",
                params![id as i64, s.state, s.reason, s.start_time, s.end_time, s.node, s.exit_code],
            )
        })
        .await?;
        Ok(())
    }

    /// Mark a job's end handled and release its SIF: true only the first time.
    pub async fn close_job(
        &self,
        id: u64,
        state: &str,
        exit_code: Option<i32>,
    ) -> anyhow::Result<bool> {
        let st = state.to_string();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE jobs SET done = 1, state = ?2, exit_code = COALESCE(?3, exit_code), end_time = CASE WHEN end_time = 0 THEN ?4 ELSE end_time END WHERE slurm_id = ?1 AND done = 0",
                params![id as i64, st, exit_code, now()],
            )?;
            tx.execute("DELETE FROM sif_pins WHERE holder = ?1", [format!("job:{id}")])?;
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobState {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, …
    pub state: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub start_time: i64,
    pub end_time: i64,
    pub node: String,
    /// Indexes of the GPUs allocated (`gres_detail`: `gpu:tesla:1(IDX:0)`).
    pub gpu_idx: Vec<u32>,
}

impl JobState {
    pub fn finished(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
        )
    }
}
