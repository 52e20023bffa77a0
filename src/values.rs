//! Typed flag values: sizes, durations, counts, GPUs, ports, env pairs, names.
//! Pure functions; each error is a catalogue key explaining the expected form.

use serde::Serialize;

use crate::messages::UserError;

/// The kind of value a flag or positional takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switch,
    Size,
    Duration,
    Count { min: u32, max: u32 },
    Cpus,
    Gpus,
    Port,
    Env,
    Name,
    User,
    Group,
    Image,
    Text,
    Path,
    Id,
    Choice(&'static [&'static str]),
}

impl Kind {
    /// An example value, used in help and in "needs a value" errors.
    pub fn example(self) -> &'static str {
        match self {
            Kind::Switch => "",
            Kind::Size => "8G",
            Kind::Duration => "2h",
            Kind::Count { .. } => "1",
            Kind::Cpus => "2",
            Kind::Gpus => "1",
            Kind::Port => "8888",
            Kind::Env => "NAME=value",
            Kind::Name => "web",
            Kind::User => "alice",
            Kind::Group => "ai-course",
            Kind::Image => "myimg:1",
            Kind::Text => "\"some text\"",
            Kind::Path => "train.sh",
            Kind::Id => "ID",
            Kind::Choice(c) => c[0],
        }
    }

    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Switch => "",
            Kind::Size => "SIZE",
            Kind::Duration => "TIME",
            Kind::Count { .. } => "N",
            Kind::Cpus => "N",
            Kind::Gpus => "[TYPE:]N",
            Kind::Port => "PORT",
            Kind::Env => "K=V",
            Kind::Name => "NAME",
            Kind::User => "USER",
            Kind::Group => "GROUP",
            Kind::Image => "IMAGE",
            Kind::Text => "TEXT",
            Kind::Path => "PATH",
            Kind::Id => "ID",
            Kind::Choice(_) => "CHOICE",
        }
    }
}

/// A parsed, validated value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    Switch,
    /// Bytes.
    Size(u64),
    /// Seconds.
    Duration(u64),
    Count(u32),
    /// Thousandths of a CPU, so 0.5 CPU is 500.
    MilliCpus(u32),
    Gpus {
        kind: Option<String>,
        count: u32,
    },
    Port {
        port: u16,
        proto: String,
    },
    Env {
        name: String,
        value: String,
    },
    Text(String),
}

const MAX_CPUS: u32 = 1024;

pub fn parse(kind: Kind, raw: &str) -> Result<Value, &'static str> {
    match kind {
        Kind::Switch => Ok(Value::Switch),
        Kind::Size => parse_size(raw).map(Value::Size),
        Kind::Duration => parse_duration(raw).map(Value::Duration),
        Kind::Count { min, max } => match raw.parse::<u32>() {
            Ok(n) if n >= min && n <= max => Ok(Value::Count(n)),
            _ => Err("value.count"),
        },
        Kind::Cpus => parse_cpus(raw).map(Value::MilliCpus),
        Kind::Gpus => parse_gpus(raw),
        Kind::Port => parse_port(raw),
        Kind::Env => parse_env(raw),
        Kind::Name => valid_name(raw)
            .then(|| Value::Text(raw.to_string()))
            .ok_or("value.name"),
        Kind::User => valid_account(raw)
            .then(|| Value::Text(raw.to_string()))
            .ok_or("value.user"),
        Kind::Group => valid_group(raw)
            .then(|| Value::Text(raw.to_string()))
            .ok_or("value.group"),
        Kind::Image => valid_image_text(raw)
            .then(|| Value::Text(raw.to_string()))
            .ok_or("value.image"),
        Kind::Text => (!raw
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'))
        .then(|| Value::Text(raw.to_string()))
        .ok_or("value.text"),
        Kind::Path => valid_rel_path(raw)
            .then(|| Value::Text(raw.to_string()))
            .ok_or("value.path"),
        Kind::Id => (!raw.is_empty()
            && raw.len() <= 128
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .then(|| Value::Text(raw.to_string()))
        .ok_or("value.id"),
        Kind::Choice(choices) => choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(raw))
            .map(|c| Value::Text(c.to_string()))
            .ok_or("value.choice"),
    }
}

pub fn value_error(kind: Kind, key: &'static str, flag: &str, raw: &str) -> UserError {
    let mut reason = UserError::new(key);
    match kind {
        Kind::Count { min, max } => {
            reason = reason
                .arg("min", min.to_string())
                .arg("max", max.to_string())
        }
        Kind::Cpus => reason = reason.arg("max", MAX_CPUS.to_string()),
        Kind::Choice(c) => {
            reason = reason.arg(
                "choices",
                c.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        _ => {}
    }
    UserError::new("grammar.bad_value")
        .arg("value", truncate(raw, 60))
        .arg("flag", flag)
        .arg("reason", reason.to_string())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n).collect();
        format!("{t}…")
    }
}

/// `512M`, `8G`, `1.5G`, `512MiB`, `8GB`: binary units (as Podman and Slurm use).
pub fn parse_size(raw: &str) -> Result<u64, &'static str> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("value.size")?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err("value.size");
    }
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err("value.size"),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.len() > 12 || frac.len() > 6 {
        return Err("value.size");
    }
    let int: u64 = int.parse().map_err(|_| "value.size")?;
    let mut bytes = int.checked_mul(mult).ok_or("value.size")?;
    if !frac.is_empty() {
        let f: u64 = frac.parse().map_err(|_| "value.size")?;
        bytes = bytes
            .checked_add(f * mult / 10u64.pow(frac.len() as u32))
            .ok_or("value.size")?;
    }
    if bytes == 0 {
        return Err("value.size_zero");
    }
    Ok(bytes)
}

/// `30m`, `2h`, `1d`, `90s`, `1h30m`, or Slurm's `D-HH:MM:SS`, `HH:MM:SS`, `MM:SS`, `D-HH`, `D-HH:MM`.
pub fn parse_duration(raw: &str) -> Result<u64, &'static str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("value.duration");
    }
    let secs = if s.contains(':') || s.contains('-') {
        parse_slurm_time(s)?
    } else {
        let mut total: u64 = 0;
        let mut num = String::new();
        let mut any = false;
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                if num.len() > 9 {
                    return Err("value.duration");
                }
            } else {
                let mult = match c.to_ascii_lowercase() {
                    's' => 1,
                    'm' => 60,
                    'h' => 3600,
                    'd' => 86400,
                    'w' => 7 * 86400,
                    _ => return Err("value.duration"),
                };
                let n: u64 = num.parse().map_err(|_| "value.duration")?;
                num.clear();
                total = total.checked_add(n * mult).ok_or("value.duration")?;
                any = true;
            }
        }
        if !num.is_empty() || !any {
            // A bare number is ambiguous (Slurm reads minutes, people mean anything).
            return Err("value.duration");
        }
        total
    };
    if secs == 0 {
        return Err("value.duration");
    }
    Ok(secs)
}

fn parse_slurm_time(s: &str) -> Result<u64, &'static str> {
    let num = |p: &str| -> Result<u64, &'static str> {
        if p.is_empty() || p.len() > 6 || !p.chars().all(|c| c.is_ascii_digit()) {
            return Err("value.duration");
        }
        p.parse().map_err(|_| "value.duration")
    };
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, s),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let parts: Vec<u64> = parts.iter().map(|p| num(p)).collect::<Result<_, _>>()?;
    let (h, m, sec) = match (days, parts.as_slice()) {
        (Some(_), [h]) => (*h, 0, 0),
        (Some(_), [h, m]) => (*h, *m, 0),
        (Some(_), [h, m, s]) => (*h, *m, *s),
        (None, [m, s]) => (0, *m, *s),
        (None, [h, m, s]) => (*h, *m, *s),
        _ => return Err("value.duration"),
    };
    if m >= 60 || sec >= 60 || (days.is_some() && h >= 24) {
        return Err("value.duration");
    }
    Ok(days.unwrap_or(0) * 86400 + h * 3600 + m * 60 + sec)
}

fn parse_cpus(raw: &str) -> Result<u32, &'static str> {
    let (int, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if int.is_empty() && frac.is_empty()
        || int.len() > 4
        || frac.len() > 3
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || (raw.contains('.') && frac.is_empty())
    {
        return Err("value.cpus");
    }
    let i: u32 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "value.cpus")?
    };
    let f: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| "value.cpus")?
    };
    let milli = i * 1000 + f;
    if milli == 0 || milli > MAX_CPUS * 1000 {
        return Err("value.cpus");
    }
    Ok(milli)
}

fn parse_gpus(raw: &str) -> Result<Value, &'static str> {
    let (kind, count) = match raw.rsplit_once(':') {
        Some((k, c)) => (Some(k), c),
        None => (None, raw),
    };
    if let Some(k) = kind {
        if k.is_empty()
            || k.len() > 32
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("value.gpus");
        }
    }
    match count.parse::<u32>() {
        Ok(n) if (1..=64).contains(&n) && count.chars().all(|c| c.is_ascii_digit()) => {
            Ok(Value::Gpus {
                kind: kind.map(str::to_string),
                count: n,
            })
        }
        _ => Err("value.gpus"),
    }
}

fn parse_port(raw: &str) -> Result<Value, &'static str> {
    let (p, proto) = match raw.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (raw, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        return Err("value.port");
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => {
            Ok(Value::Port { port: n, proto })
        }
        _ => Err("value.port"),
    }
}

fn parse_env(raw: &str) -> Result<Value, &'static str> {
    let (name, value) = raw.split_once('=').ok_or("value.env")?;
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 128 {
        return Err("value.env");
    }
    if value.chars().any(|c| c == '\0') {
        return Err("value.env");
    }
    Ok(Value::Env {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// Resource names: `^[a-z0-9][a-z0-9-]{0,62}$`. No `_` or `.`, so an owner
/// prefix joined with `_` can never collide between owners.
/// A span of time as replies say it: `45s`, `30m`, `22h`, `6d` (the largest unit that
/// gives at least two; negative spans are 0).
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Department account names: POSIX-portable, lowercase.
pub fn valid_account(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

pub fn valid_group(s: &str) -> bool {
    valid_account(s)
}

/// A loose syntactic check; the images module resolves and validates fully.
/// Transports (`docker-archive:` and friends) never pass: only `[owner/]name[:tag]`
/// or `localhost/name[:tag]`.
fn valid_image_text(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let last = parts.len() - 1;
    !s.is_empty()
        && s.len() <= 255
        && parts.len() <= 3
        && parts.iter().enumerate().all(|(i, p)| {
            !p.is_empty()
                && !p.starts_with(['.', '-', ':', '@'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
                && (i == last || !p.contains([':', '@']))
        })
        && !s.contains("..")
        && parts[last].matches(':').count() <= 1 + usize::from(s.contains('@'))
}

/// A relative path that cannot escape the directory it is joined to.
pub fn valid_rel_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && !s.starts_with('/')
        && !s.chars().any(|c| c.is_control())
        && s.split('/').all(|seg| seg != "..")
}

/// distribution's path-component grammar: `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`.
pub fn valid_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty()
        || b.len() > 128
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
    {
        return false;
    }
    // Separators: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("8gib"), Ok(8 << 30));
        assert_eq!(parse_size("512"), Err("value.size"));
        assert_eq!(parse_size("lots"), Err("value.size"));
        assert_eq!(parse_size("0M"), Err("value.size_zero"));
        assert_eq!(parse_size("99999999999999T"), Err("value.size"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1-02:03:04"), Ok(86400 + 7384));
        assert_eq!(parse_duration("02:03:04"), Ok(7384));
        assert_eq!(parse_duration("1-12"), Ok(86400 + 12 * 3600));
        assert_eq!(parse_duration("90"), Err("value.duration"));
        assert_eq!(parse_duration("1-25"), Err("value.duration"));
        assert_eq!(parse_duration("10:61"), Err("value.duration"));
    }

    #[test]
    fn others() {
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert!(parse_cpus("0").is_err() && parse_cpus("2.").is_err() && parse_cpus("-1").is_err());
        assert_eq!(
            parse_gpus("tesla:2"),
            Ok(Value::Gpus {
                kind: Some("tesla".into()),
                count: 2
            })
        );
        assert!(parse_gpus("0").is_err() && parse_gpus(":1").is_err());
        assert_eq!(
            parse_port("8888"),
            Ok(Value::Port {
                port: 8888,
                proto: "tcp".into()
            })
        );
        assert!(
            parse_port("0").is_err()
                && parse_port("80/sctp").is_err()
                && parse_port("+80").is_err()
        );
        assert!(
            parse_env("A=b c").is_ok() && parse_env("1A=b").is_err() && parse_env("A").is_err()
        );
        assert!(
            valid_name("web-1") && !valid_name("Web") && !valid_name("a_b") && !valid_name("-a")
        );
        assert!(valid_name(&"a".repeat(63)) && !valid_name(&"a".repeat(64)));
        assert!(!valid_image_text("docker-archive:/tmp/x"));
        assert!(!valid_image_text("docker-archive:/tmp/x.tar"));
        assert!(valid_image_text("bob/myimg:1") && valid_image_text("localhost/tools:latest"));
        assert!(
            !valid_rel_path("../x")
                && !valid_rel_path("/etc/passwd")
                && valid_rel_path("jobs/train.sh")
        );
    }
}
