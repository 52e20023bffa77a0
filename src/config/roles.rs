//! `[roles]`: which groups make admins and instructors.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Roles {
    pub admin_groups: Vec<String>,
    pub instructor_groups: Vec<String>,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            admin_groups: vec!["shisa-admins".into()],
            instructor_groups: vec!["instructors".into()],
        }
    }
}

/// Which role a person has, from the groups configured in `[roles]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Instructor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }

    pub fn from_groups(groups: &[String], roles: &Roles) -> Role {
        if groups.iter().any(|g| roles.admin_groups.contains(g)) {
            Role::Admin
        } else if groups.iter().any(|g| roles.instructor_groups.contains(g)) {
            Role::Instructor
        } else {
            Role::Student
        }
    }
}

/// `[courses.GROUP]`: a course is a directory group whose members its instructors may see
/// (`ps --group`, their containers' and jobs' details). No other group counts as a course.
#[derive(Debug, serde::Deserialize, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Course {
    /// The accounts that teach it (they must also have the instructor role).
    #[serde(default)]
    pub instructors: Vec<String>,
}

/// Courses by their group's name.
pub type Courses = std::collections::BTreeMap<String, Course>;
