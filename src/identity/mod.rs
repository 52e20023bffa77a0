//! Who is asking: department accounts (from LDAP or the static users file),
//! their roles, and the link from a Mattermost user to an account.

pub mod directory;
pub mod homes;
pub mod ldap;
pub mod linking;
pub mod users_file;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Roles;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Instructor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }

    pub fn from_groups(groups: &[String], roles: &Roles) -> Role {
        if groups.iter().any(|g| roles.admin_groups.contains(g)) {
            Role::Admin
        } else if groups.iter().any(|g| roles.instructor_groups.contains(g)) {
            Role::Instructor
        } else {
            Role::Student
        }
    }
}

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
