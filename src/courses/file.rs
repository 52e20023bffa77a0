//! `shisa-course.toml`: parsed with unknown keys refused, then checked; every error names
//! its line, so the plan comment can point at it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::schedule::{Lecture, Slot};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    title: String,
    students: Vec<String>,
    instructors: Vec<String>,
    environment: RawEnv,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    build: Option<String>,
    image: Option<String>,
    cpus: Option<f64>,
    memory: Option<String>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    sif: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default = "thirty_minutes")]
    ready_before: String,
    #[serde(default)]
    lectures: Vec<RawLecture>,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            timezone: utc(),
            ready_before: thirty_minutes(),
            lectures: Vec::new(),
        }
    }
}

fn utc() -> String {
    "UTC".into()
}

fn thirty_minutes() -> String {
    "30m".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLecture {
    weekday: Option<String>,
    date: Option<String>,
    start: String,
    duration: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_max_containers")]
    max_containers: u32,
    #[serde(default = "stop")]
    at_end: String,
    #[serde(default = "ten_minutes")]
    grace: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_containers: default_max_containers(),
            at_end: stop(),
            grace: ten_minutes(),
        }
    }
}

fn default_max_containers() -> u32 {
    100
}

fn stop() -> String {
    "stop".into()
}

fn ten_minutes() -> String {
    "10m".into()
}

/// Where the course's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Built from this file of the course repository.
    Build(String),
    /// A registry or library image, as written.
    Image(String),
}

/// What each student's container gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub source: ImageSource,
    pub cpus: f64,
    pub memory: u64,
    pub gpus: u32,
    pub ports: Vec<u16>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub sif: bool,
}

/// A checked course file.
#[derive(Debug, Clone, PartialEq)]
pub struct Course {
    pub id: String,
    pub title: String,
    pub students: Vec<String>,
    pub instructors: Vec<String>,
    pub environment: Environment,
    pub timezone: String,
    pub ready_before: u64,
    pub lectures: Vec<Lecture>,
    pub max_containers: u32,
    /// Containers are stopped `grace` seconds after a lecture ends; false: kept.
    pub stop_at_end: bool,
    pub grace: u64,
}

/// One thing wrong with the file, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    /// 1-based; 0 when the whole file is meant.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// The largest course file read (a course file is a page of settings).
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// Parse and check a course file: the course, or every error found, each with its line.
pub fn parse(text: &str) -> Result<Course, Vec<FileError>> {
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![FileError {
            line: 0,
            message: format!("the file is larger than {} KiB", MAX_FILE_BYTES / 1024),
        }]);
    }
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        vec![FileError {
            line,
            message: e.message().trim().to_string(),
        }]
    })?;
    let mut errors = Vec::new();
    let mut bad = |key: &str, message: String| {
        errors.push(FileError {
            line: line_of(text, key),
            message,
        })
    };
    if !valid_id(&raw.id) {
        bad(
            "id",
            format!(
                "`id = \"{}\"`: use 2 to 32 lowercase letters, digits and `-`, starting with a letter (students type it: `/course run ml101`)",
                raw.id
            ),
        );
    }
    if raw.title.trim().is_empty() || raw.title.len() > 200 {
        bad(
            "title",
            "give the course a title (at most 200 characters)".into(),
        );
    }
    for (key, groups) in [
        ("students", &raw.students),
        ("instructors", &raw.instructors),
    ] {
        if groups.is_empty() {
            bad(key, format!("`{key}` needs at least one directory group"));
        }
        for g in groups {
            if !valid_group(g) {
                bad(key, format!("`{g}` is not a directory group name"));
            }
        }
    }
    let e = &raw.environment;
    let source = match (&e.build, &e.image) {
        (Some(b), None) => {
            if b.is_empty() || b.starts_with('/') || b.split('/').any(|p| p == ".." || p.is_empty())
            {
                bad(
                    "build",
                    format!("`build = \"{b}\"` must be a file inside the course repository"),
                );
            }
            ImageSource::Build(b.clone())
        }
        (None, Some(i)) => {
            if i.is_empty() || i.len() > 255 || i.chars().any(|c| c.is_whitespace()) {
                bad(
                    "image",
                    format!("`image = \"{i}\"` is not an image reference"),
                );
            }
            ImageSource::Image(i.clone())
        }
        _ => {
            bad(
                "environment",
                "`[environment]` needs exactly one of `build = \"Containerfile\"` or `image = \"…\"`"
                    .into(),
            );
            ImageSource::Build(String::new())
        }
    };
    let cpus = e.cpus.unwrap_or(1.0);
    if !(cpus > 0.0 && cpus <= 64.0) {
        bad("cpus", format!("`cpus = {cpus}`: from 0.1 to 64"));
    }
    let memory = match &e.memory {
        None => 2 << 30,
        Some(m) => match crate::values::parse_size(m) {
            Ok(b) if b >= 16 << 20 => b,
            _ => {
                bad(
                    "memory",
                    format!("`memory = \"{m}\"` is not a size like `8G` (at least 16M)"),
                );
                0
            }
        },
    };
    if e.gpus > 8 {
        bad(
            "gpus",
            format!("`gpus = {}`: at most 8 per student", e.gpus),
        );
    }
    if e.ports.len() > 10 {
        bad("ports", "at most 10 ports".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &e.ports {
        if *p == 0 || !seen.insert(*p) {
            bad("ports", format!("port {p} is 0 or listed twice"));
        }
    }
    if e.command.iter().any(|a| a.contains('\0')) || e.command.len() > 64 {
        bad(
            "command",
            "the command has a NUL byte or more than 64 words".into(),
        );
    }
    for k in e.env.keys() {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            bad("env", format!("`{k}` is not an environment variable name"));
        }
    }
    let s = &raw.schedule;
    if jiff::tz::db().get(&s.timezone).is_err() {
        bad(
            "timezone",
            format!(
                "`{}` is not a time zone; write it like `Asia/Tokyo`",
                s.timezone
            ),
        );
    }
    let ready_before = match crate::values::parse_duration(&s.ready_before) {
        Ok(d) if d <= 86400 => d,
        _ => {
            bad(
                "ready_before",
                format!(
                    "`ready_before = \"{}\"`: a duration up to `1d`, like `30m`",
                    s.ready_before
                ),
            );
            0
        }
    };
    let mut lectures = Vec::new();
    for (n, l) in s.lectures.iter().enumerate() {
        let line = nth_line_of(text, "start", n);
        match Lecture::new(
            l.weekday.as_deref(),
            l.date.as_deref(),
            &l.start,
            &l.duration,
        ) {
            Ok(x) => lectures.push(x),
            Err(m) => errors.push(FileError {
                line,
                message: format!("lecture {}: {m}", n + 1),
            }),
        }
    }
    let lim = &raw.limits;
    let mut bad = |key: &str, message: String| {
        errors.push(FileError {
            line: line_of(text, key),
            message,
        })
    };
    if lim.max_containers == 0 || lim.max_containers > 10_000 {
        bad("max_containers", "`max_containers`: from 1 to 10000".into());
    }
    let stop_at_end = match lim.at_end.as_str() {
        "stop" => true,
        "keep" => false,
        other => {
            bad(
                "at_end",
                format!("`at_end = \"{other}\"`: `stop` or `keep`"),
            );
            true
        }
    };
    let grace = match crate::values::parse_duration(&lim.grace) {
        Ok(d) if d <= 7200 => d,
        _ => {
            bad(
                "grace",
                format!("`grace = \"{}\"`: a duration up to `2h`", lim.grace),
            );
            0
        }
    };
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(errors);
    }
    Ok(Course {
        id: raw.id,
        title: raw.title,
        students: raw.students,
        instructors: raw.instructors,
        environment: Environment {
            source,
            cpus,
            memory,
            gpus: e.gpus,
            ports: e.ports.clone(),
            command: e.command.clone(),
            env: e.env.clone(),
            sif: e.sif,
        },
        timezone: s.timezone.clone(),
        ready_before,
        lectures,
        max_containers: lim.max_containers,
        stop_at_end,
        grace,
    })
}

impl Course {
    /// The lecture now running or next to start at or after `now` (Unix seconds).
    pub fn next_lecture(&self, now: i64) -> Option<Slot> {
        super::schedule::next(&self.lectures, &self.timezone, now)
    }

    /// Whether `account` studies or teaches it (by directory group).
    pub fn member(&self, groups: &[String]) -> bool {
        self.students
            .iter()
            .chain(&self.instructors)
            .any(|g| groups.contains(g))
    }

    pub fn teaches(&self, groups: &[String]) -> bool {
        self.instructors.iter().any(|g| groups.contains(g))
    }
}

fn valid_id(id: &str) -> bool {
    (2..=32).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_group(g: &str) -> bool {
    (1..=64).contains(&g.len())
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The line of the first `key =` (or `[key]`) in the file; 0 if absent.
fn line_of(text: &str, key: &str) -> usize {
    nth_line_of(text, key, 0)
}

fn nth_line_of(text: &str, key: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start().trim_start_matches('{').trim_start();
            let header = format!("[{key}]");
            l.starts_with(&header)
                || l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.split([',', '{']).any(|part| {
                    part.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
        })
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = r#"id = "ml101"
title = "Machine learning 101"
students = ["ml101"]
instructors = ["ml101-staff"]

[environment]
build = "Containerfile"
cpus = 2
memory = "4G"
gpus = 1
ports = [8888]
command = ["jupyter", "lab", "--ip=0.0.0.0"]
env = { COURSE = "ml101" }
sif = true

[schedule]
timezone = "Asia/Tokyo"
ready_before = "30m"
lectures = [
  { weekday = "mon", start = "09:00", duration = "90m" },
  { date = "2026-12-10", start = "13:00", duration = "1h" },
]

[limits]
max_containers = 80
at_end = "stop"
grace = "10m"
"#;

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.id, "ml101");
        assert_eq!(
            c.environment.source,
            ImageSource::Build("Containerfile".into())
        );
        assert_eq!(c.environment.memory, 4 << 30);
        assert_eq!(c.lectures.len(), 2);
        assert_eq!(c.ready_before, 1800);
        assert!(c.stop_at_end && c.grace == 600);
    }

    #[test]
    fn errors_name_their_lines() {
        let e = parse(&EXAMPLE.replace("cpus = 2", "cpu = 2")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].line, 8, "{e:?}");
        assert!(e[0].message.contains("unknown field `cpu`"), "{e:?}");
        let e = parse(
            &EXAMPLE
                .replace("memory = \"4G\"", "memory = \"lots\"")
                .replace("Asia/Tokyo", "Mars/Olympus")
                .replace("\"09:00\"", "\"25:00\""),
        )
        .unwrap_err();
        let lines: Vec<usize> = e.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![9, 17, 20], "{e:?}");
        assert!(e[2].message.contains("lecture 1"), "{e:?}");
        let e = parse(&EXAMPLE.replace(
            "build = \"Containerfile\"",
            "build = \"Containerfile\"\nimage = \"x\"",
        ))
        .unwrap_err();
        assert!(e[0].message.contains("exactly one of"), "{e:?}");
        let e = parse(&EXAMPLE.replace("\"Containerfile\"", "\"../etc/passwd\"")).unwrap_err();
        assert!(
            e[0].message.contains("inside the course repository"),
            "{e:?}"
        );
        let e = parse(&EXAMPLE.replace("\"ml101\"\ntitle", "\"ML 101\"\ntitle")).unwrap_err();
        assert_eq!(e[0].line, 1);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_text(s in "\\PC{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_edited_examples(cut in 0usize..700, junk in "[\\[\\]{}=\"a-z0-9 ,.:\\n-]{0,20}") {
            let mut t = EXAMPLE.to_string();
            let at = cut.min(t.len());
            if t.is_char_boundary(at) {
                t.insert_str(at, &junk);
            }
            let _ = parse(&t);
        }
    }
}
