//! What each command does. The edge hands over a verified form; this module
//! resolves the caller, parses, authorises, records, and either answers at
//! once or queues the work and acknowledges.

pub mod blades;
pub mod builds;
pub mod ci;
pub mod containers;
pub mod courses;
pub mod images;
pub mod jobs;
pub mod registry;
pub mod sif;
pub mod slash;

use crate::access::{authorize, Action, Resource};
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

/// Whose things `ps` lists: the caller's; a group's with `--group` (its instructors,
/// admins); one user's with `--user` (admins). Decided by the one authorisation function.
pub async fn listed_owners(
    app: &App,
    caller: &Account,
    listing: &crate::commands::typed::Listing,
    command: &str,
) -> anyhow::Result<Result<Vec<String>, UserError>> {
    if let Some(g) = listing.group.as_deref() {
        if !authorize(caller, Action::List, &Resource::Group(g), &app.cfg.courses).allowed() {
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
    Ok(owner_named(app, caller, listing.user.as_deref()).map(|o| vec![o]))
}

/// The owner a command is about: the caller, or with `--user NAME` that user (admins
/// only, through the authorisation function).
pub fn owner_named(app: &App, caller: &Account, user: Option<&str>) -> Result<String, UserError> {
    match user {
        Some(u)
            if authorize(caller, Action::List, &Resource::User(u), &app.cfg.courses).allowed() =>
        {
            Ok(u.to_string())
        }
        Some(_) => Err(UserError::new("container.only_admins_user")),
        None => Ok(caller.uid.clone()),
    }
}
