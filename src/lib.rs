//! shisa: containers, images and GPU jobs for a university department,
//! reached through Mattermost slash commands and GitLab.
//!
//! The edge (`http`, `mattermost`) verifies and parses; `commands` is the
//! pure grammar; `handlers` decide (with `ownership` and `identity`) and
//! record; `worker` runs queued work; adapters (`podman`, `identity::ldap`,
//! `store`) talk to the outside world.

pub mod access;
pub mod app;
pub mod blades;
pub mod builds;
pub mod cli;
pub mod commands;
pub mod config;
pub mod containers;
pub mod courses;
pub mod error;
pub mod gitlab;
pub mod gpus;
pub mod handlers;
pub mod http;
pub mod identity;
pub mod images;
pub mod mattermost;
pub mod messages;
pub mod metrics;
pub mod podman;
pub mod registry;
pub mod sealing;
pub mod sif;
pub mod slurm;
pub mod store;
pub mod usage;
pub mod values;
pub mod work;
