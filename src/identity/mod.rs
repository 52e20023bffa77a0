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
}

impl Account {
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
}
