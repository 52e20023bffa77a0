//! `[directory]`: LDAP or the static users file.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryRaw {
    pub source: DirectorySource,
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    #[serde(default)]
    pub ldap: Option<LdapRaw>,
    #[serde(default = "default_cache")]
    pub cache_seconds: u64,
}

pub(super) fn default_cache() -> u64 {
    60
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectorySource {
    Static,
    Ldap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapRaw {
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// Accept any certificate (test directories only).
    #[serde(default)]
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: SecretSource,
    pub base_dn: String,
    /// `{uid}` is replaced by the escaped account name.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    #[serde(default)]
    pub group_base_dn: Option<String>,
    /// `{uid}` is the escaped account name, `{dn}` the escaped user DN.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default)]
    pub attributes: LdapAttributes,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

pub(super) fn default_user_filter() -> String {
    "(&(objectClass=posixAccount)(uid={uid}))".into()
}

pub(super) fn default_group_filter() -> String {
    "(&(objectClass=posixGroup)(memberUid={uid}))".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct LdapAttributes {
    pub uid: String,
    pub uid_number: String,
    pub gid_number: String,
    pub home: String,
    pub mail: String,
    pub display_name: String,
    pub group_name: String,
}

impl Default for LdapAttributes {
    fn default() -> Self {
        LdapAttributes {
            uid: "uid".into(),
            uid_number: "uidNumber".into(),
            gid_number: "gidNumber".into(),
            home: "homeDirectory".into(),
            mail: "mail".into(),
            display_name: "cn".into(),
            group_name: "cn".into(),
        }
    }
}

#[derive(Debug)]
pub enum Directory {
    Static {
        users_file: PathBuf,
        cache_seconds: u64,
    },
    Ldap {
        ldap: Box<Ldap>,
        cache_seconds: u64,
    },
}

#[derive(Debug)]
pub struct Ldap {
    pub url: String,
    pub starttls: bool,
    pub tls_insecure: bool,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    pub user_filter: String,
    pub group_base_dn: String,
    pub group_filter: String,
    pub attributes: LdapAttributes,
    pub timeout_seconds: u64,
}
