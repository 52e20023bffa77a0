//! The durable queue of tasks. A request that will be answered later is a row
//! here before its acknowledgement is sent; a worker claims it, and a crash
//! or restart puts claimed-but-unfinished rows back (`recover`).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now, Store};

/// Where the eventual answer goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ReplyTarget {
    pub response_url: Option<String>,
    pub channel_id: Option<String>,
    pub mm_user_id: Option<String>,
    pub uid: String,
    pub command: String,
    pub sub: String,
}

impl ReplyTarget {
    /// An answer for someone who did not ask in a channel (work shisa started itself): it
    /// goes to them by direct message (or the outbox).
    pub fn to_user(uid: &str, command: &str, sub: &str) -> ReplyTarget {
        ReplyTarget {
            uid: uid.to_string(),
            command: command.to_string(),
            sub: sub.to_string(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The shape of the payload (see `work::tasks`).
    pub version: u32,
    pub owner: String,
    pub request_id: String,
    pub reply: Option<ReplyTarget>,
    pub attempts: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
}

/// A task to queue in the same transaction as other work.
#[derive(Debug, Clone)]
pub struct OwnedTask {
    pub kind: String,
    pub payload: serde_json::Value,
    pub version: u32,
    pub owner: String,
    pub request_id: String,
    pub reply: Option<ReplyTarget>,
    pub max_attempts: u32,
    /// Which workers take it (`quick`, `slow`, `slurm`; see `work::tasks::Lane`).
    pub lane: String,
}

pub fn enqueue_tx(c: &rusqlite::Connection, j: &OwnedTask) -> rusqlite::Result<i64> {
    let t = now();
    c.execute(
        "INSERT INTO queue(kind, payload, owner, request_id, reply, state, max_attempts, run_after, created_at, updated_at, version, lane)
         VALUES (?1,?2,?3,?4,?5,'queued',?6,?7,?7,?7,?8,?9)",
        params![
            j.kind,
            j.payload.to_string(),
            j.owner,
            j.request_id,
            j.reply.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default()),
            j.max_attempts,
            t,
            j.version,
            j.lane
        ],
    )?;
    Ok(c.last_insert_rowid())
}

impl Store {
    pub async fn enqueue(&self, j: OwnedTask) -> anyhow::Result<i64> {
        self.call(move |c| enqueue_tx(c, &j)).await
    }

    /// Queue a job submission only while its owner has fewer than `max` Slurm jobs open and
    /// submissions waiting, counted in the same transaction (a burst cannot pass the cap):
    /// `Ok(id)`, or `Err(held)`.
    pub async fn enqueue_job_capped(
        &self,
        j: OwnedTask,
        max: u32,
    ) -> anyhow::Result<Result<i64, u32>> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: u32 = tx.query_row(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE owner = ?1 AND done = 0)
                      + (SELECT COUNT(*) FROM queue WHERE owner = ?1 AND kind = ?2 AND state IN ('queued', 'running'))",
                params![j.owner, j.kind],
                |r| r.get(0),
            )?;
            if held >= max {
                return Ok(Err(held));
            }
            let id = enqueue_tx(&tx, &j)?;
            tx.commit()?;
            Ok(Ok(id))
        })
        .await
    }

    /// Claim the next ready task of a lane, if any: round robin across owners (the owner
    /// served longest ago first, each owner's own tasks in order), never a task about a
    /// container another task is busy with, and never more than `per_blade` container tasks
    /// running on one blade. Also returns how long it waited, in seconds.
    pub async fn claim(
        &self,
        lane: &str,
        per_blade: u32,
    ) -> anyhow::Result<Option<(QueuedTask, i64)>> {
        let lane = lane.to_string();
        self.call(move |c| {
            let t = now();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: Option<(i64, String, i64)> = tx
                .query_row(
                    "SELECT q.id, q.owner, q.created_at FROM queue q
                     LEFT JOIN queue_turns t ON t.lane = q.lane AND t.owner = q.owner
                     LEFT JOIN containers c ON c.id = json_extract(q.payload, '$.container')
                     WHERE q.state = 'queued' AND q.lane = ?2 AND q.run_after <= ?1
                       AND (c.id IS NULL OR (
                            NOT EXISTS (SELECT 1 FROM queue r WHERE r.state = 'running'
                                        AND json_extract(r.payload, '$.container') = c.id)
                            AND (SELECT COUNT(*) FROM queue r
                                 JOIN containers rc ON rc.id = json_extract(r.payload, '$.container')
                                 WHERE r.state = 'running' AND r.lane = ?2 AND rc.blade = c.blade) < ?3))
                       AND NOT EXISTS (SELECT 1 FROM queue e WHERE e.state = 'queued' AND e.lane = q.lane
                                       AND e.owner = q.owner AND e.id < q.id
                                       AND json_extract(e.payload, '$.container') = c.id)
                     ORDER BY COALESCE(t.turn, 0), q.id LIMIT 1",
                    params![t, lane, per_blade],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((id, owner, created)) = next else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO queue_turns(lane, owner, turn)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(turn), 0) + 1 FROM queue_turns WHERE lane = ?1))
                 ON CONFLICT (lane, owner) DO UPDATE SET turn = excluded.turn",
                params![lane, owner],
            )?;
            let task = tx.query_row(
                "UPDATE queue SET state = 'running', attempts = attempts + 1, updated_at = ?1
                 WHERE id = ?2
                 RETURNING id, kind, payload, owner, request_id, reply, attempts, max_attempts, version",
                params![t, id],
                |r| {
                    let payload: String = r.get(2)?;
                    let reply: Option<String> = r.get(5)?;
                    Ok(QueuedTask {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                        owner: r.get(3)?,
                        request_id: r.get(4)?,
                        reply: reply.and_then(|s| serde_json::from_str(&s).ok()),
                        attempts: r.get(6)?,
                        max_attempts: r.get(7)?,
                        version: r.get(8)?,
                    })
                },
            )?;
            tx.commit()?;
            Ok(Some((task, t - created)))
        })
        .await
    }

    /// Tasks queued and running, per lane.
    pub async fn queue_depth_by_lane(&self) -> anyhow::Result<Vec<(String, i64, i64)>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT lane, COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'running'), 0)
                 FROM queue WHERE state IN ('queued', 'running') GROUP BY lane ORDER BY lane",
            )?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect();
            v
        })
        .await
    }

    pub async fn finish(
        &self,
        id: i64,
        outcome: Outcome,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let state = match outcome {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        };
        let err = error.map(str::to_string);
        self.call(move |c| {
            c.execute(
                "UPDATE queue SET state = ?1, last_error = ?2, updated_at = ?3 WHERE id = ?4",
                params![state, err, now(), id],
            )
        })
        .await?;
        Ok(())
    }

    /// Put a task back for another attempt after `delay_seconds`.
    pub async fn retry_later(
        &self,
        id: i64,
        error: &str,
        delay_seconds: i64,
    ) -> anyhow::Result<()> {
        let err = error.to_string();
        self.call(move |c| {
            let t = now();
            c.execute(
                "UPDATE queue SET state = 'queued', last_error = ?1, run_after = ?2, updated_at = ?3 WHERE id = ?4",
                params![err, t + delay_seconds, t, id],
            )
        })
        .await?;
        Ok(())
    }

    /// After a crash or an unclean stop: tasks left `running` go back to the queue.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        self.call(|c| {
            c.execute(
                "UPDATE queue SET state = 'queued', updated_at = ?1 WHERE state = 'running'",
                [now()],
            )
        })
        .await
    }

    /// Put one claimed task back untouched (graceful shutdown), giving back its attempt.
    pub async fn release(&self, id: i64) -> anyhow::Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE queue SET state = 'queued', attempts = MAX(attempts - 1, 0), updated_at = ?1 WHERE id = ?2 AND state = 'running'",
                params![now(), id],
            )
        })
        .await?;
        Ok(())
    }

    pub async fn queue_depth(&self) -> anyhow::Result<(i64, i64)> {
        self.call(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(state = 'queued'), 0), COALESCE(SUM(state = 'running'), 0) FROM queue",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .await
    }

    pub fn task_state(&self, request_id: &str) -> anyhow::Result<Option<(String, u32)>> {
        self.with(|c| {
            c.query_row(
                "SELECT state, attempts FROM queue WHERE request_id = ?1",
                [request_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(owner: &str, rid: &str, lane: &str) -> OwnedTask {
        OwnedTask {
            kind: "k".into(),
            payload: serde_json::json!({"a": 1}),
            version: 1,
            owner: owner.into(),
            request_id: rid.into(),
            reply: None,
            max_attempts: 3,
            lane: lane.into(),
        }
    }

    #[tokio::test]
    async fn claim_finish_recover() {
        let s = Store::open_in_memory().unwrap();
        let id = s.enqueue(task("alice", "r1", "quick")).await.unwrap();
        assert!(
            s.claim("slow", 2).await.unwrap().is_none(),
            "another lane's workers do not take it"
        );
        let (j, _) = s.claim("quick", 2).await.unwrap().unwrap();
        assert_eq!(
            (j.id, j.attempts, j.payload["a"].as_i64()),
            (id, 1, Some(1))
        );
        assert!(
            s.claim("quick", 2).await.unwrap().is_none(),
            "a running task is not claimed twice"
        );
        assert_eq!(s.recover().await.unwrap(), 1);
        let (j, _) = s.claim("quick", 2).await.unwrap().unwrap();
        assert_eq!(j.attempts, 2);
        s.finish(j.id, Outcome::Done, None).await.unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), (0, 0));
        assert_eq!(s.task_state("r1").unwrap(), Some(("done".into(), 2)));
    }

    #[tokio::test]
    async fn owners_take_turns() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..5 {
            s.enqueue(task("alice", &format!("a{i}"), "quick"))
                .await
                .unwrap();
        }
        s.enqueue(task("bob", "b0", "quick")).await.unwrap();
        s.enqueue(task("carol", "c0", "quick")).await.unwrap();
        let mut order = Vec::new();
        while let Some((j, _)) = s.claim("quick", 2).await.unwrap() {
            s.finish(j.id, Outcome::Done, None).await.unwrap();
            order.push(j.request_id);
        }
        // Alice queued first and five times, yet bob and carol each wait one turn at most.
        assert_eq!(order, ["a0", "b0", "c0", "a1", "a2", "a3", "a4"]);
    }
}
