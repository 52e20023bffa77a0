//! Text of a slash command → [`Parsed`]. Pure.
//!
//! Grammar: `SUB (FLAG | ARG)* [-- WORD...]` where FLAG is `--name`,
//! `--name=value` or `--name value`; `-h`/`--help` anywhere asks for help.

use std::collections::BTreeMap;

use serde::Serialize;

use super::lexer::{normalize, tokenize};
use super::spec::{Program, SubSpec, Trailing};
use super::values::{self, Kind, Value};
use crate::messages::UserError;

/// A fully parsed and validated invocation of one subcommand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invocation {
    pub program: Program,
    pub sub: &'static str,
    /// Flags by their long name, in the order given; repeatable ones may hold several.
    pub flags: BTreeMap<&'static str, Vec<Value>>,
    /// Positional arguments by their spec name.
    pub args: BTreeMap<&'static str, Value>,
    /// The words after `--`, untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "parsed", rename_all = "snake_case")]
pub enum Parsed {
    Help {
        program: Program,
        topic: Option<&'static str>,
    },
    Invocation(Invocation),
}

impl Invocation {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains_key(flag)
    }
    pub fn value(&self, flag: &str) -> Option<&Value> {
        self.flags.get(flag).and_then(|v| v.first())
    }
    pub fn values(&self, flag: &str) -> &[Value] {
        self.flags.get(flag).map(Vec::as_slice).unwrap_or(&[])
    }
    pub fn text(&self, flag: &str) -> Option<&str> {
        match self.value(flag) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }
    pub fn arg_text(&self, name: &str) -> Option<&str> {
        match self.args.get(name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }
}

pub fn parse(program: Program, text: &str) -> Result<Parsed, UserError> {
    let normalized = normalize(text);
    let words = tokenize(&normalized)?;
    let spec = program.spec();
    let cmd = program.slash();

    let Some(first) = words.first() else {
        return Ok(Parsed::Help {
            program,
            topic: None,
        });
    };
    if matches!(first.as_str(), "help" | "--help" | "-h") {
        let topic = match words.get(1) {
            None => None,
            Some(t) => match spec.sub(t) {
                Some(s) => Some(s.name),
                None => {
                    return Err(UserError::new("grammar.unknown_help_topic")
                        .arg("command", cmd)
                        .arg("sub", clip(t))
                        .arg(
                            "suggestion",
                            suggestion(t, spec.subs.iter().map(|s| s.name)),
                        ))
                }
            },
        };
        return Ok(Parsed::Help { program, topic });
    }
    let Some(sub) = spec.sub(first) else {
        return Err(UserError::new("grammar.unknown_subcommand")
            .arg("command", cmd)
            .arg("sub", clip(first))
            .arg(
                "suggestion",
                suggestion(first, spec.subs.iter().map(|s| s.name)),
            ));
    };
    parse_sub(program, sub, &words[1..])
}

fn parse_sub(
    program: Program,
    sub: &'static SubSpec,
    words: &[String],
) -> Result<Parsed, UserError> {
    let cmd = program.slash();
    let mut flags: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let mut positionals: Vec<&String> = Vec::new();
    let mut command = None;
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        if w == "--" {
            command = Some(words[i..].to_vec());
            break;
        }
        if w == "-h" || w == "--help" {
            return Ok(Parsed::Help {
                program,
                topic: Some(sub.name),
            });
        }
        if let Some(body) = w.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(f) = sub.flag(name) else {
                let all = sub
                    .flags
                    .iter()
                    .flat_map(|f| std::iter::once(f.long).chain(f.aliases.iter().copied()));
                return Err(UserError::new("grammar.unknown_flag")
                    .arg("flag", format!("--{}", clip(name)))
                    .arg("command", cmd)
                    .arg("sub", sub.name)
                    .arg("suggestion", suggestion_prefixed(name, all, "--")));
            };
            let shown = format!("--{}", f.long);
            let value = if f.kind == Kind::Switch {
                if inline.is_some() {
                    return Err(UserError::new("grammar.flag_takes_no_value").arg("flag", shown));
                }
                Value::Switch
            } else {
                let raw = match inline {
                    Some(v) => v,
                    None => match words.get(i) {
                        Some(v) if !(v.starts_with("--") && v.len() > 2) && v != "--" => {
                            i += 1;
                            v.clone()
                        }
                        _ => {
                            return Err(UserError::new("grammar.missing_value")
                                .arg("flag", shown)
                                .arg("example", f.kind.example()))
                        }
                    },
                };
                values::parse(f.kind, &raw)
                    .map_err(|key| values::value_error(f.kind, key, &shown, &raw))?
            };
            let slot = flags.entry(f.long).or_default();
            if !slot.is_empty() && !f.repeat {
                return Err(UserError::new("grammar.repeated_flag").arg("flag", shown));
            }
            slot.push(value);
            continue;
        }
        if w.starts_with('-')
            && w.len() > 1
            && !w.chars().nth(1).is_some_and(|c| c.is_ascii_digit())
        {
            // Single-dash options are not part of the vocabulary; say which long one was meant.
            let name = w.trim_start_matches('-');
            let all = sub.flags.iter().map(|f| f.long);
            return Err(UserError::new("grammar.unknown_flag")
                .arg("flag", clip(w))
                .arg("command", cmd)
                .arg("sub", sub.name)
                .arg("suggestion", suggestion_prefixed(name, all, "--")));
        }
        positionals.push(w);
    }

    // `--gpu` is `--gpus 1`.
    if flags.contains_key("gpu") {
        if flags.contains_key("gpus") {
            return Err(UserError::new("grammar.conflict")
                .arg("a", "--gpu")
                .arg("b", "--gpus"));
        }
        flags.remove("gpu");
        flags.insert(
            "gpus",
            vec![Value::Gpus {
                kind: None,
                count: 1,
            }],
        );
    }

    let usage = super::help::usage(program, sub);
    let mut args = BTreeMap::new();
    let mut pos = positionals.into_iter();
    for a in sub.args {
        match pos.next() {
            Some(raw) => {
                let v = values::parse(a.kind, raw)
                    .map_err(|key| values::value_error(a.kind, key, a.name, raw))?;
                args.insert(a.name, v);
            }
            None if a.required => {
                return Err(UserError::new("grammar.missing_argument")
                    .arg("command", cmd)
                    .arg("sub", sub.name)
                    .arg("arg", a.name)
                    .arg("usage", usage));
            }
            None => {}
        }
    }
    if let Some(extra) = pos.next() {
        return Err(UserError::new("grammar.too_many_arguments")
            .arg("command", cmd)
            .arg("sub", sub.name)
            .arg("extra", clip(extra))
            .arg("usage", usage));
    }
    match (sub.trailing, &command) {
        (Trailing::None, Some(_)) => {
            return Err(UserError::new("grammar.no_command_allowed")
                .arg("command", cmd)
                .arg("sub", sub.name)
                .arg("usage", usage))
        }
        (Trailing::Required, None) | (Trailing::Required, Some(_))
            if command.as_ref().is_none_or(|c| c.is_empty()) =>
        {
            return Err(UserError::new("grammar.missing_argument")
                .arg("command", cmd)
                .arg("sub", sub.name)
                .arg("arg", "a command after `--`")
                .arg("usage", usage));
        }
        _ => {}
    }
    if let Some(c) = &command {
        if c.iter().any(|w| w.contains('\0')) {
            return Err(UserError::new("grammar.bad_value")
                .arg("value", "\\0")
                .arg("flag", "--")
                .arg("reason", UserError::new("value.text").to_string()));
        }
    }
    if !sub.one_of.is_empty() {
        let given: Vec<&str> = sub
            .one_of
            .iter()
            .copied()
            .filter(|o| {
                if *o == "--" {
                    command.as_ref().is_some_and(|c| !c.is_empty())
                } else {
                    flags.contains_key(o)
                }
            })
            .collect();
        let show = |o: &str| {
            if o == "--" {
                "`-- CMD`".to_string()
            } else {
                format!("`--{o}`")
            }
        };
        match given.len() {
            1 => {}
            0 => {
                return Err(UserError::new("grammar.requires_one_of")
                    .arg("command", cmd)
                    .arg("sub", sub.name)
                    .arg(
                        "options",
                        sub.one_of
                            .iter()
                            .map(|o| show(o))
                            .collect::<Vec<_>>()
                            .join(" or "),
                    )
                    .arg("usage", usage))
            }
            _ => {
                return Err(UserError::new("grammar.conflict")
                    .arg("a", show(given[0]))
                    .arg("b", show(given[1])))
            }
        }
    }
    Ok(Parsed::Invocation(Invocation {
        program,
        sub: sub.name,
        flags,
        args,
        command,
    }))
}

fn clip(s: &str) -> String {
    let t: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    if t.chars().count() < s.chars().count() {
        format!("{t}…")
    } else {
        t
    }
}

/// " Did you mean `x`?" for the closest candidate, or "".
pub fn suggestion<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    suggestion_prefixed(word, candidates, "")
}

pub fn suggestion_prefixed<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
    prefix: &str,
) -> String {
    let word = word.to_ascii_lowercase();
    let best = candidates
        .map(|c| (distance(&word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) || (word.len() >= 2 && c.starts_with(&word)))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, c)) => UserError::new("grammar.did_you_mean")
            .arg("candidate", format!("{prefix}{c}"))
            .to_string(),
        None => String::new(),
    }
}

/// Optimal-string-alignment distance (transpositions count as one edit, so `rnu` → `run`).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}
