//! `[mattermost]`: slash-command tokens, the bot, linking accounts.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattermostRaw {
    /// One token per registered slash command; add the new one before removing the old to rotate.
    pub tokens: Vec<SecretSource>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub bot_token: Option<SecretSource>,
    pub linking: Linking,
    /// Who users should ask when something needs a human, shown in replies.
    #[serde(default = "default_contact")]
    pub contact: String,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

pub(super) fn default_contact() -> String {
    "the shisa admins".into()
}

pub(super) fn default_timeout() -> u64 {
    10
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Linking {
    /// Production: ask Mattermost for the user, link only LDAP-authenticated ones.
    MattermostLdap,
    /// Demo and tests: trust the Mattermost user name.
    Username,
}

#[derive(Debug)]
pub struct Mattermost {
    pub tokens: Vec<Secret>,
    pub url: Option<String>,
    pub bot_token: Option<Secret>,
    pub linking: Linking,
    pub contact: String,
    pub timeout_seconds: u64,
}
