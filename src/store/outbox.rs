//! Direct messages kept in the database when no Mattermost bot is configured;
//! `shisa chat --inbox --as USER` reads them.

use rusqlite::params;

use super::{now, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub id: i64,
    pub recipient: String,
    pub message: String,
    pub props: String,
    pub created_at: i64,
}

impl Store {
    pub async fn outbox_push(
        &self,
        recipient: &str,
        mm_user_id: Option<&str>,
        message: &str,
        props: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let v = (
            recipient.to_string(),
            mm_user_id.map(str::to_string),
            message.to_string(),
            props.to_string(),
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO outbox(recipient, mm_user_id, message, props, created_at) VALUES (?1,?2,?3,?4,?5)",
                params![v.0, v.1, v.2, v.3, now()],
            )
        })
        .await?;
        Ok(())
    }

    /// Unread messages for a user, marked read as they are returned.
    pub fn outbox_take(&self, recipient: &str) -> anyhow::Result<Vec<OutboxMessage>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let msgs = {
                let mut st = tx.prepare(
                    "SELECT id, recipient, message, props, created_at FROM outbox WHERE recipient = ?1 AND read_at IS NULL ORDER BY id",
                )?;
                let rows = st.query_map([recipient], |r| {
                    Ok(OutboxMessage { id: r.get(0)?, recipient: r.get(1)?, message: r.get(2)?, props: r.get(3)?, created_at: r.get(4)? })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.execute("UPDATE outbox SET read_at = ?1 WHERE recipient = ?2 AND read_at IS NULL", params![now(), recipient])?;
            tx.commit()?;
            Ok(msgs)
        })
    }
}
