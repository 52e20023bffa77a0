//! What each command does. The edge hands over a verified form; this module
//! resolves the caller, parses, authorises, records, and either answers at
//! once or queues the work and acknowledges.

pub mod blades;
pub mod builds;
pub mod ci;
pub mod containers;
pub mod events;
pub mod images;
pub mod info;
pub mod jobs;
pub mod runners;
pub mod sif;
pub mod slash;

use crate::app::App;
use crate::identity::{Account, Role};
use crate::messages::UserError;

/// The groups of a resource's owner, which the authorisation function needs when an
/// instructor acts on a member of their course (empty for one's own things).
pub async fn owner_groups(app: &App, caller: &Account, owner: &str) -> Vec<String> {
    if caller.uid == owner || caller.role == Role::Student {
        return Vec::new();
    }
    app.directory
        .lookup(owner)
        .await
        .ok()
        .flatten()
        .map(|a| a.groups)
        .unwrap_or_default()
}

/// Whether `caller` may list a whole group's things: admins, and instructors of that
/// (course) group.
pub fn may_list_group(app: &App, caller: &Account, group: &str) -> bool {
    caller.role == Role::Admin
        || (caller.role == Role::Instructor
            && caller.in_group(group)
            && !app.role_groups.iter().any(|r| r == group))
}

/// Whose things `ps` lists: the caller's; a group's with `--group` (its instructors,
/// admins); one user's with `--user` (admins).
pub async fn listed_owners(
    app: &App,
    caller: &Account,
    inv: &crate::commands::Invocation,
    command: &str,
) -> anyhow::Result<Result<Vec<String>, UserError>> {
    if let Some(g) = inv.text("group") {
        if !may_list_group(app, caller, g) {
            return Ok(Err(UserError::new("command.forbidden")
                .arg("command", command)
                .arg("sub", "ps --group")
                .arg("role", "instructors of that group, and admins")));
        }
        return Ok(Ok(app
            .directory
            .members(g)
            .await
            .map_err(|e| anyhow::anyhow!(e))?));
    }
    if let Some(u) = inv.text("user") {
        if caller.role != Role::Admin {
            return Ok(Err(UserError::new("container.only_admins_user")));
        }
        return Ok(Ok(vec![u.to_string()]));
    }
    Ok(Ok(vec![caller.uid.clone()]))
}

/// How a queued job ended badly.
#[derive(Debug)]
pub enum JobError {
    /// The user's request cannot be done; tell them why. Not retried.
    User(UserError),
    /// Something outside broke (a blade, the network); try again later.
    Retry(anyhow::Error),
    /// What the job was about no longer exists (removed meanwhile): done, nobody to tell.
    Gone,
}

impl From<UserError> for JobError {
    fn from(e: UserError) -> Self {
        JobError::User(e)
    }
}
