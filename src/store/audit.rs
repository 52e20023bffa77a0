//! The audit trail: who did what, when, and how it ended.

use rusqlite::params;
use serde::Serialize;

use super::{now, Store};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub request_id: Option<String>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub resource: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

pub struct NewAudit<'a> {
    pub request_id: Option<&'a str>,
    pub actor: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub resource: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

impl Store {
    pub async fn audit(&self, e: NewAudit<'_>) -> anyhow::Result<()> {
        let vals = (
            e.request_id.map(str::to_string),
            e.actor.to_string(),
            e.role.to_string(),
            e.action.to_string(),
            e.resource.map(str::to_string),
            e.outcome.to_string(),
            e.detail.map(str::to_string),
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit(at, request_id, actor, role, action, resource, outcome, detail) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
                params![now(), vals.0, vals.1, vals.2, vals.3, vals.4, vals.5, vals.6],
            )
        })
        .await?;
        Ok(())
    }

    pub fn audit_entries(&self, actor: Option<&str>) -> anyhow::Result<Vec<AuditEntry>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, at, request_id, actor, role, action, resource, outcome, detail FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) ORDER BY id",
            )?;
            let rows = st.query_map([actor], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    request_id: r.get(2)?,
                    actor: r.get(3)?,
                    role: r.get(4)?,
                    action: r.get(5)?,
                    resource: r.get(6)?,
                    outcome: r.get(7)?,
                    detail: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }
}
