//! Who is asking: department accounts (from LDAP or the static users file),
//! their roles, and the link from a Mattermost user to an account.

pub mod directory;
pub mod homes;
pub mod ldap;
pub mod linking;

use std::path::PathBuf;

use serde::Serialize;

pub use crate::config::users_file;
pub use crate::config::Role;

/// A department account, as the directory describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub uid: String,
    pub uid_number: u32,
    pub gid_number: u32,
    pub home: PathBuf,
    pub mail: String,
    pub display_name: String,
    pub groups: Vec<String>,
    pub role: Role,
    /// The account's entry in the directory (LDAP), the DN GitLab's LDAP sign-in records
    /// as the user's `extern_uid`; none for the static users file.
    pub dn: Option<String>,
}

impl Account {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// Who the department's people are: LDAP, the static users file, or a test's fake.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// Look an account up by its name. `Ok(None)`: no such account.
    async fn lookup(&self, uid: &str) -> Result<Option<Account>, DirectoryError>;
    /// The members of a group (for instructors' views).
    async fn members(&self, group: &str) -> Result<Vec<String>, DirectoryError>;
    /// Check a password (registry logins).
    async fn verify_password(&self, uid: &str, password: &str) -> Result<bool, DirectoryError>;
}
