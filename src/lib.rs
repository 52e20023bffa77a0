//! shisa: containers, images and GPU jobs for a university department,
//! reached through Mattermost slash commands and GitLab.
pub mod commands;
pub mod messages;
