//! GitLab at the edge: webhook payloads (`hooks`), who sent them (`verify`),
//! and the API client shisa uses for a user (`client`).

pub mod client;
pub mod hooks;
pub mod verify;
