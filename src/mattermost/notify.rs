//! Getting an answer to a user: the slash command's `response_url` while it
//! is usable (5 uses, 30 minutes), else a bot DM, else the outbox table.

use super::client::{Chat, PostError};
use super::Reply;
use crate::store::queue::ReplyTarget;
use crate::store::Store;

#[derive(Clone)]
pub struct Notifier {
    pub client: std::sync::Arc<dyn Chat>,
    pub store: Store,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    ResponseUrl,
    DirectMessage,
    Outbox,
}

impl Notifier {
    /// Deliver the (delayed) answer to a request.
    pub async fn reply(&self, target: &ReplyTarget, reply: &Reply) -> anyhow::Result<Delivered> {
        if let Some(url) = &target.response_url {
            if self.store.take_response_url(url).await? {
                match self.client.post_response_url(url, reply).await {
                    Ok(()) => return Ok(Delivered::ResponseUrl),
                    Err(PostError::Refused(code)) => tracing::info!(
                        code,
                        "response_url refused; falling back to a direct message"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "response_url failed; falling back to a direct message")
                    }
                }
            }
        }
        self.direct(
            &target.uid,
            target.mm_user_id.as_deref(),
            &reply.text,
            &reply.props,
        )
        .await
    }

    /// A notice nobody waits on (a build ended, a container died): delivered by DM or kept in
    /// the outbox; a failure to do either is logged, never passed to the caller.
    pub async fn notice(&self, uid: &str, text: &str, props: serde_json::Value) {
        if let Err(e) = self.direct(uid, None, text, &props).await {
            tracing::warn!(error = %e, uid, "notice not delivered");
        }
    }

    /// A notice for a user that is not the answer to a command (a build finished, a job ended).
    pub async fn direct(
        &self,
        uid: &str,
        mm_user_id: Option<&str>,
        text: &str,
        props: &serde_json::Value,
    ) -> anyhow::Result<Delivered> {
        let mm_id = match mm_user_id {
            Some(id) => Some(id.to_string()),
            None => self.store.mm_user_of(uid).await?,
        };
        if self.client.has_bot() {
            if let Some(id) = &mm_id {
                match self.client.direct_message(id, text, props).await {
                    Ok(()) => return Ok(Delivered::DirectMessage),
                    Err(e) => {
                        tracing::warn!(error = %e, uid, "direct message failed; keeping it in the outbox")
                    }
                }
            }
        }
        self.store
            .outbox_push(uid, mm_id.as_deref(), text, props)
            .await?;
        Ok(Delivered::Outbox)
    }
}
