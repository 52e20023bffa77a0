//! What a merge request would change, and whether the course fits the blades.

use super::file::{Course, ImageSource};
use super::schedule::{self, When};

/// One blade's room for course containers, from its configuration.
#[derive(Debug, Clone)]
pub struct BladeRoom {
    pub name: String,
    /// None: not limited in the configuration.
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    /// GPUs × how many containers may share each.
    pub gpu_slots: u32,
}

/// The capacity check: seats asked, seats the blades hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub seats: u32,
    pub room: u32,
    pub blades: usize,
    /// What runs out first when it does not fit: `CPUs`, `memory`, `GPUs`.
    pub short_of: Option<&'static str>,
}

impl Fit {
    pub fn fits(&self) -> bool {
        self.room >= self.seats
    }
}

/// How many of `seats` containers with the course's resources the blades hold, each blade
/// counted on its own (a container never spans two).
pub fn capacity(c: &Course, seats: u32, blades: &[BladeRoom]) -> Fit {
    let e = &c.environment;
    let mut room: u64 = 0;
    let mut limits = [0u64; 3];
    for b in blades {
        let by_cpu = b
            .cpus
            .map(|x| (x / e.cpus).floor().max(0.0) as u64)
            .unwrap_or(u64::MAX);
        let by_mem = b.memory.map(|m| m / e.memory.max(1)).unwrap_or(u64::MAX);
        let by_gpu = b
            .gpu_slots
            .checked_div(e.gpus)
            .map(u64::from)
            .unwrap_or(u64::MAX);
        let here = by_cpu.min(by_mem).min(by_gpu);
        room = room.saturating_add(here);
        for (i, v) in [by_cpu, by_mem, by_gpu].into_iter().enumerate() {
            if v == here {
                limits[i] += 1;
            }
        }
    }
    let room = room.min(u32::MAX as u64) as u32;
    let short_of = if room >= seats {
        None
    } else {
        let i = (0..3).max_by_key(|i| limits[*i]).unwrap_or(0);
        Some(["CPUs", "memory", "GPUs"][i])
    };
    Fit {
        seats,
        room,
        blades: blades.len(),
        short_of,
    }
}

/// `2 CPUs, 4G, 1 GPU` for one student.
pub fn per_student(c: &Course) -> String {
    let e = &c.environment;
    let mut s = format!(
        "{} CPUs, {}",
        trim_float(e.cpus),
        crate::containers::fmt_size(e.memory)
    );
    if e.gpus > 0 {
        s.push_str(&format!(
            ", {} GPU{}",
            e.gpus,
            if e.gpus == 1 { "" } else { "s" }
        ));
    }
    s
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn source(c: &Course) -> String {
    match &c.environment.source {
        ImageSource::Build(f) => format!("built from `{f}`"),
        ImageSource::Image(i) => format!("`{i}`"),
    }
}

fn lectures(c: &Course) -> String {
    if c.lectures.is_empty() {
        return "none".into();
    }
    let mut v: Vec<String> = c
        .lectures
        .iter()
        .map(|l| {
            let when = match &l.when {
                When::Weekly(w) => format!("{w:?}").chars().take(3).collect::<String>(),
                When::On(d) => d.to_string(),
            };
            format!(
                "{when} {} ({} min)",
                l.start.strftime("%H:%M"),
                l.seconds / 60
            )
        })
        .collect();
    v.push(format!(
        "{}, ready {} min before",
        c.timezone,
        c.ready_before / 60
    ));
    v.join("; ")
}

/// The course's settings as rows (what, value), in a fixed order.
pub fn rows(c: &Course) -> Vec<(&'static str, String)> {
    let e = &c.environment;
    vec![
        ("title", c.title.clone()),
        ("image", source(c)),
        ("per student", per_student(c)),
        (
            "ports",
            if e.ports.is_empty() {
                "none".into()
            } else {
                e.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "command",
            if e.command.is_empty() {
                "the image's".into()
            } else {
                format!("`{}`", e.command.join(" "))
            },
        ),
        (
            "environment",
            e.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("SIF for /job", if e.sif { "yes" } else { "no" }.into()),
        ("lectures", lectures(c)),
        ("students", c.students.join(", ")),
        ("instructors", c.instructors.join(", ")),
        (
            "limits",
            format!(
                "{} containers; at the end: {}",
                c.max_containers,
                if c.stop_at_end {
                    format!("stopped after {} min", c.grace / 60)
                } else {
                    "kept".into()
                }
            ),
        ),
    ]
}

/// (what, applied, proposed) for every setting that changes; all of them for a first version.
pub fn changes(applied: Option<&Course>, proposed: &Course) -> Vec<(&'static str, String, String)> {
    let new = rows(proposed);
    match applied {
        None => new
            .into_iter()
            .map(|(k, v)| (k, "—".to_string(), v))
            .collect(),
        Some(a) => rows(a)
            .into_iter()
            .zip(new)
            .filter(|((_, old), (_, new))| old != new)
            .map(|((k, old), (_, new))| (k, old, new))
            .collect(),
    }
}

/// The next lecture as a line, and whether there is time to prepare (`ready_before`).
pub fn next_lecture_line(c: &Course, now: i64) -> String {
    match c.next_lecture(now) {
        None => "no lecture ahead".into(),
        Some(s) => {
            let label = schedule::label(&s, &c.timezone);
            let ready_at = s.start - c.ready_before as i64;
            if now <= ready_at {
                format!("{label} ({}): time to prepare", c.timezone)
            } else {
                format!(
                    "{label} ({}): less than {} min ahead, it may not be ready in time",
                    c.timezone,
                    c.ready_before / 60
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn course(cpus: f64, mem: &str, gpus: u32) -> Course {
        super::super::parse(&format!(
            "id = \"ml101\"\ntitle = \"ML\"\nstudents = [\"s\"]\ninstructors = [\"t\"]\n[environment]\nimage = \"localhost/busybox:latest\"\ncpus = {cpus}\nmemory = \"{mem}\"\ngpus = {gpus}\n"
        ))
        .unwrap()
    }

    fn blade(cpus: f64, mem_g: u64, gpu_slots: u32) -> BladeRoom {
        BladeRoom {
            name: "b".into(),
            cpus: Some(cpus),
            memory: Some(mem_g << 30),
            gpu_slots,
        }
    }

    #[test]
    fn capacity_counts_each_blade_on_its_own() {
        let c = course(1.0, "2G", 1);
        // 4 blades × (2 GPUs × 8 shares) = 64 GPU seats, CPUs and memory plenty.
        let blades: Vec<_> = (0..4).map(|_| blade(64.0, 256, 16)).collect();
        let f = capacity(&c, 80, &blades);
        assert_eq!((f.room, f.fits(), f.short_of), (64, false, Some("GPUs")));
        let f = capacity(&c, 60, &blades);
        assert!(f.fits());
        // Memory: 3 × 2G on a 5G blade is 2.
        let f = capacity(&course(0.5, "2G", 0), 3, &[blade(64.0, 5, 0)]);
        assert_eq!((f.room, f.short_of), (2, Some("memory")));
        // Unlimited blades hold any number.
        let open = BladeRoom {
            name: "x".into(),
            cpus: None,
            memory: None,
            gpu_slots: 0,
        };
        assert!(capacity(&course(1.0, "1G", 0), 1000, &[open]).fits());
    }

    #[test]
    fn changes_list_only_what_differs() {
        let a = course(1.0, "2G", 0);
        let b = course(2.0, "2G", 0);
        let ch = changes(Some(&a), &b);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].0, "per student");
        assert_eq!(
            (ch[0].1.as_str(), ch[0].2.as_str()),
            ("1 CPUs, 2G", "2 CPUs, 2G")
        );
        assert_eq!(changes(None, &b).len(), rows(&b).len());
        assert!(changes(Some(&b), &b).is_empty());
    }
}
