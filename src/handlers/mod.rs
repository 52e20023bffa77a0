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

use crate::messages::UserError;

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
