//! Course environments: the course file an instructor keeps in a GitLab project
//! (`shisa-course.toml`), its lecture schedule, and the plan shown on a merge request
//! (what changes, whether it fits the blades). Pure: the work layer fetches files, builds,
//! pulls and posts; nothing here does I/O.

pub mod file;
pub mod plan;
pub mod schedule;

pub use file::{parse, Course, Environment, FileError, ImageSource};
pub use schedule::{Lecture, Slot};

/// The file's name at the top of a course repository.
pub const COURSE_FILE: &str = "shisa-course.toml";

/// The registry repository of a course's images: pushed only by shisa, pulled by its members.
pub fn repository(id: &str) -> String {
    format!("courses/{id}")
}
