//! Outbound calls to Mattermost: `response_url` posts and the REST API
//! (user look-up for linking, direct messages). Timeouts and bounded retries.

use std::time::Duration;

use serde::Deserialize;

use super::Reply;
use crate::config::Secret;

#[derive(Clone)]
pub struct MattermostClient {
    http: reqwest::Client,
    url: Option<String>,
    bot_token: Option<Secret>,
    bot_user_id: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct MmUser {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub auth_service: String,
    #[serde(default)]
    pub auth_data: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Mattermost says the URL is used up or expired (400/404): do not retry it.
    #[error("response_url refused with {0}")]
    Refused(u16),
    #[error("{0}")]
    Transport(String),
}

const ATTEMPTS: u32 = 3;

/// Mattermost as shisa uses it: the REST client here, or a test's fake.
#[async_trait::async_trait]
pub trait Chat: Send + Sync {
    fn has_bot(&self) -> bool;
    /// POST a reply to a slash command's `response_url`.
    async fn post_response_url(&self, url: &str, reply: &Reply) -> Result<(), PostError>;
    async fn get_user(&self, user_id: &str) -> anyhow::Result<MmUser>;
    /// Send a direct message from the bot to a Mattermost user.
    async fn direct_message(
        &self,
        user_id: &str,
        text: &str,
        props: &serde_json::Value,
    ) -> anyhow::Result<()>;
}

impl MattermostClient {
    pub fn new(url: Option<String>, bot_token: Option<Secret>, timeout_seconds: u64) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_seconds))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("shisa/", env!("CARGO_PKG_VERSION")))
            // The bot token must never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client");
        MattermostClient {
            http,
            url,
            bot_token,
            bot_user_id: Default::default(),
        }
    }

    async fn api<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let (Some(base), Some(token)) = (&self.url, &self.bot_token) else {
            anyhow::bail!("no Mattermost URL and bot token configured");
        };
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}/api/v4{path}"))
                .bearer_auth(token.expose());
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    anyhow::bail!("Mattermost {} {path}: HTTP {}", method, r.status())
                }
                Ok(r) => {
                    last = Some(anyhow::anyhow!(
                        "Mattermost {} {path}: HTTP {}",
                        method,
                        r.status()
                    ))
                }
                Err(e) => {
                    last = Some(anyhow::anyhow!(
                        "Mattermost {} {path}: {}",
                        method,
                        e.without_url()
                    ))
                }
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("Mattermost unreachable")))
    }
}

#[async_trait::async_trait]
impl Chat for MattermostClient {
    fn has_bot(&self) -> bool {
        self.url.is_some() && self.bot_token.is_some()
    }

    /// POST a reply to a slash command's `response_url`.
    async fn post_response_url(&self, url: &str, reply: &Reply) -> Result<(), PostError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            match self.http.post(url).json(reply).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if matches!(r.status().as_u16(), 400 | 404) => {
                    return Err(PostError::Refused(r.status().as_u16()))
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.without_url().to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
        }
        Err(PostError::Transport(last))
    }

    async fn get_user(&self, user_id: &str) -> anyhow::Result<MmUser> {
        let id = percent_encoding::utf8_percent_encode(user_id, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        self.api(reqwest::Method::GET, &format!("/users/{id}"), None)
            .await
    }

    /// Send a direct message from the bot to a Mattermost user.
    async fn direct_message(
        &self,
        user_id: &str,
        text: &str,
        props: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let me = self
            .bot_user_id
            .get_or_try_init(|| async {
                let u: MmUser = self.api(reqwest::Method::GET, "/users/me", None).await?;
                Ok::<_, anyhow::Error>(u.id)
            })
            .await?;
        #[derive(Deserialize)]
        struct Channel {
            id: String,
        }
        let ch: Channel = self
            .api(
                reqwest::Method::POST,
                "/channels/direct",
                Some(serde_json::json!([me, user_id])),
            )
            .await?;
        let _: serde_json::Value = self
            .api(
                reqwest::Method::POST,
                "/posts",
                Some(serde_json::json!({"channel_id": ch.id, "message": super::clip_post(text.to_string()), "props": props})),
            )
            .await?;
        Ok(())
    }
}
