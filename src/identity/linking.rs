//! From a Mattermost user to a department account, by the immutable
//! `user_id` (never the changeable `user_name` alone). Links are stored on
//! first sight and reused.

use super::directory::Directory;
use super::Account;
use crate::config::Linking;
use crate::mattermost::client::Chat;
use crate::messages::UserError;
use crate::store::Store;

pub struct Linker<'a> {
    pub mode: Linking,
    pub store: &'a Store,
    pub directory: &'a dyn Directory,
    pub mattermost: &'a dyn Chat,
    pub contact: &'a str,
}

#[derive(Debug)]
pub enum LinkError {
    User(UserError),
    Internal(anyhow::Error),
}

impl From<UserError> for LinkError {
    fn from(e: UserError) -> Self {
        LinkError::User(e)
    }
}

impl Linker<'_> {
    pub async fn resolve(
        &self,
        mm_user_id: &str,
        mm_user_name: &str,
    ) -> Result<Account, LinkError> {
        let unknown = || {
            UserError::new("identity.unknown_user")
                .arg("user", mm_user_name)
                .arg("contact", self.contact)
        };
        let down = || {
            LinkError::User(UserError::new("identity.directory_down").arg("contact", self.contact))
        };
        if let Some(uid) = self
            .store
            .link_of(mm_user_id)
            .await
            .map_err(LinkError::Internal)?
        {
            return match self.directory.lookup(&uid).await {
                Ok(Some(a)) => Ok(a),
                Ok(None) => Err(unknown().into()),
                Err(e) => {
                    tracing::warn!(error = %e, "directory lookup failed");
                    Err(down())
                }
            };
        }
        let uid = match self.mode {
            Linking::Username => mm_user_name.to_string(),
            Linking::MattermostLdap => {
                let u = self.mattermost.get_user(mm_user_id).await.map_err(|e| {
                    tracing::warn!(error = %e, "Mattermost user lookup failed");
                    down()
                })?;
                // Mattermost stores the LDAP ID attribute in auth_data for LDAP users.
                if u.auth_service != "ldap" || u.id != mm_user_id {
                    return Err(UserError::new("identity.not_ldap")
                        .arg("user", mm_user_name)
                        .arg("contact", self.contact)
                        .into());
                }
                u.auth_data.unwrap_or_default()
            }
        };
        let account = match self.directory.lookup(&uid).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(unknown().into()),
            Err(e) => {
                tracing::warn!(error = %e, "directory lookup failed");
                return Err(down());
            }
        };
        let mode = match self.mode {
            Linking::Username => "username",
            Linking::MattermostLdap => "mattermost-ldap",
        };
        self.store
            .link(mm_user_id, &account.uid, mm_user_name, mode)
            .await
            .map_err(LinkError::Internal)?;
        tracing::info!(uid = %account.uid, mode, "linked a Mattermost user");
        Ok(account)
    }
}
