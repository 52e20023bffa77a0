//! The static users file (`deploy/demo-users.toml`): the embedded default's
//! directory, and the single source the demo LDIF, Unix accounts and home
//! directories are generated from, so uids and homes always agree.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::values::{valid_account, valid_group};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    #[serde(default)]
    pub users: Vec<FileUser>,
    #[serde(default)]
    pub groups: Vec<FileGroup>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    pub uid: String,
    pub uid_number: u32,
    pub gid_number: u32,
    pub name: String,
    pub mail: String,
    /// Absolute home directory; when absent, `DATA_DIR/home/UID`.
    #[serde(default)]
    pub home: Option<PathBuf>,
    /// Demo only: the Mattermost user id `shisa chat --as` sends for this user.
    #[serde(default)]
    pub mattermost_user_id: Option<String>,
    /// Demo only: the password set in the throwaway LDAP directory.
    #[serde(default)]
    pub demo_password: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    pub name: String,
    pub gid_number: u32,
    #[serde(default)]
    pub members: Vec<String>,
}

impl UsersFile {
    pub fn load(path: &Path) -> Result<UsersFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("`{}`: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let f: UsersFile = toml::from_str(text).map_err(|e| {
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })?;
        let mut seen = std::collections::HashSet::new();
        let mut numbers = std::collections::HashSet::new();
        for (i, u) in f.users.iter().enumerate() {
            if !valid_account(&u.uid) {
                return Err(format!(
                    "users[{i}].uid: `{}` is not a valid account name",
                    u.uid
                ));
            }
            if !seen.insert(u.uid.clone()) {
                return Err(format!("users[{i}].uid: `{}` appears twice", u.uid));
            }
            if u.uid_number < 1000 {
                return Err(format!(
                    "users[{i}].uid_number: {} is a system uid; use 1000 or more",
                    u.uid_number
                ));
            }
            if !numbers.insert(u.uid_number) {
                return Err(format!(
                    "users[{i}].uid_number: {} appears twice",
                    u.uid_number
                ));
            }
            if let Some(h) = &u.home {
                if !h.is_absolute() {
                    return Err(format!("users[{i}].home: must be an absolute path"));
                }
            }
        }
        for (i, g) in f.groups.iter().enumerate() {
            if !valid_group(&g.name) {
                return Err(format!(
                    "groups[{i}].name: `{}` is not a valid group name",
                    g.name
                ));
            }
            for m in &g.members {
                if !seen.contains(m) {
                    return Err(format!(
                        "groups[{i}].members: `{m}` is not a user in this file"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn user(&self, uid: &str) -> Option<&FileUser> {
        self.users.iter().find(|u| u.uid == uid)
    }

    pub fn groups_of(&self, uid: &str) -> Vec<String> {
        let mut g: Vec<String> = self
            .groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == uid))
            .map(|g| g.name.clone())
            .collect();
        g.sort();
        g
    }

    pub fn home_of(&self, u: &FileUser, data_dir: &Path) -> PathBuf {
        u.home
            .clone()
            .unwrap_or_else(|| data_dir.join("home").join(&u.uid))
    }

    /// The LDIF for a test directory with the same users, groups and homes.
    pub fn to_ldif(&self, base_dn: &str, data_dir: &Path) -> String {
        let mut out = String::new();
        let dc = base_dn
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("dc="))
            .unwrap_or("example");
        out.push_str(&format!("dn: {base_dn}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\no: {dc}\ndc: {dc}\n\n"));
        out.push_str(&format!(
            "dn: ou=people,{base_dn}\nobjectClass: organizationalUnit\nou: people\n\n"
        ));
        out.push_str(&format!(
            "dn: ou=groups,{base_dn}\nobjectClass: organizationalUnit\nou: groups\n\n"
        ));
        for u in &self.users {
            let home = self.home_of(u, data_dir);
            out.push_str(&format!(
                "dn: uid={uid},ou=people,{base_dn}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\nuid: {uid}\ncn: {name}\nsn: {uid}\nmail: {mail}\nuidNumber: {un}\ngidNumber: {gn}\nhomeDirectory: {home}\nloginShell: /bin/sh\n",
                uid = u.uid,
                name = u.name,
                mail = u.mail,
                un = u.uid_number,
                gn = u.gid_number,
                home = home.display()
            ));
            if let Some(p) = &u.demo_password {
                out.push_str(&format!("userPassword: {p}\n"));
            }
            out.push('\n');
        }
        for g in &self.groups {
            out.push_str(&format!(
                "dn: cn={},ou=groups,{base_dn}\nobjectClass: posixGroup\ncn: {}\ngidNumber: {}\n",
                g.name, g.name, g.gid_number
            ));
            for m in &g.members {
                out.push_str(&format!("memberUid: {m}\n"));
            }
            out.push('\n');
        }
        out
    }
}
