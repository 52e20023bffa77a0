//! The error policy, one for the whole service.
//!
//! - **User-facing errors** are [`UserError`]s: a catalogue key with arguments, rendered
//!   in the user's language. Their arguments are what the user typed or can act on (a
//!   name, a limit, a state), never an adapter's text, a path or a host name of our
//!   machines. The one exception is a refusal an outside service gives to the user's own
//!   request in words meant for them: Slurm's `sbatch` refusal (`job.slurm_refused`) and
//!   GitLab's answer about a project (`gitlab::client::explain`, a summary of the status).
//! - **Internal errors** are everything else (`anyhow::Error`, adapter errors such as
//!   `PodmanError`): logged with the request id and the detail; the user gets
//!   `internal.error` (or, for queued work, `command.failed_here` /
//!   `container.start_failed_here`) with that id as the reference and the contact.
//!   [`internal`] is the one way to make that answer.
//! - **Success replies are not errors**: they are [`crate::messages::Message`]s.
//! - Queued work ends in a [`crate::work::TaskError`]: `User` (told, not retried), `Retry`
//!   (internal; retried, then `command.gave_up`), or `Gone`.

pub use crate::messages::UserError;

/// The answer for an internal failure: logged here with the request id and the detail;
/// the user sees only the reference and whom to tell. `key` is `internal.error` or one
/// of the `*_here` keys, which take the same `request` and `contact` arguments.
pub fn internal(
    key: &'static str,
    request: &str,
    contact: &str,
    detail: &dyn std::fmt::Display,
) -> UserError {
    tracing::error!(request, error = %detail, key, "internal error");
    UserError::new(key)
        .arg("request", request)
        .arg("contact", contact)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_names_the_reference_and_not_the_detail() {
        let e = super::internal(
            "internal.error",
            "req-1",
            "the admins",
            &"cannot connect to /run/podman/podman.sock",
        );
        let t = e.to_string();
        assert!(t.contains("req-1") && t.contains("the admins"), "{t}");
        assert!(!t.contains("podman.sock"), "{t}");
    }
}
