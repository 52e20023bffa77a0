//! Home directories of the embedded default: created on first use, owned by
//! the account, mode 0700. Only under `DATA_DIR/home`: a home elsewhere (LDAP,
//! Ceph) is the site's business, and a path that escapes is refused.

use std::path::{Component, Path};

use super::Account;

pub fn ensure_home(account: &Account, data_dir: &Path) -> std::io::Result<bool> {
    let root = data_dir.join("home");
    let home = &account.home;
    let inside = home.starts_with(&root)
        && home
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
        && home.parent() == Some(root.as_path());
    if !inside || home.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir(home)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
    // As root, hand it to its owner; as anyone else (a developer's demo), keep it and say so.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(home, Some(account.uid_number), Some(account.gid_number))?;
    } else {
        tracing::warn!(home = %home.display(), "not running as root: the home directory stays owned by shisa's user");
    }
    Ok(true)
}
