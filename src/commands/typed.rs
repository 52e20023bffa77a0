//! Typed commands: what a parsed [`Invocation`] means, one enum per command family with
//! typed fields (sizes in bytes, durations in seconds, ports, image references as typed).
//! Pure. The handlers match on these, never on strings; [`parse`](super::parse) has
//! already checked every value against the spec, so reading one back cannot fail.

use serde::Serialize;

use super::parse::Invocation;
use super::spec::Program;
use super::values::Value;

/// Everything a user can ask for.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "program", content = "command", rename_all = "snake_case")]
pub enum Command {
    Container(ContainerCommand),
    Job(JobCommand),
    Course(CourseCommand),
}

/// `/course …`
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "sub", rename_all = "snake_case")]
pub enum CourseCommand {
    List { all: bool },
    Run { course: String },
    Status { course: String },
    Ps { course: String },
    Enable { project: String },
    Disable { project: String },
}

/// `/container …`
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "sub", rename_all = "snake_case")]
pub enum ContainerCommand {
    Run(RunArgs),
    Ps(Listing),
    Logs {
        target: Target,
        tail: Option<u32>,
    },
    Exec {
        target: Target,
        command: Vec<String>,
    },
    Stop(Target),
    Start(Target),
    /// Not reclaimed for `time` seconds from now (`None`: the role's most).
    Extend {
        target: Target,
        time: Option<u64>,
    },
    Rm {
        target: Target,
        force: bool,
    },
    Inspect(Target),
    Images {
        shared: bool,
        library: bool,
        user: Option<String>,
    },
    Share {
        image: String,
        with: Vec<String>,
        description: Option<String>,
    },
    Unshare {
        image: String,
        with: Vec<String>,
    },
    Rmi {
        image: String,
        user: Option<String>,
    },
    Sif {
        image: String,
    },
    Templates,
    Token(TokenAction),
    Build(BuildAction),
    Info,
    Blades,
    Drain {
        blade: String,
        undo: bool,
    },
    Whoami,
}

/// `/job …`
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "sub", rename_all = "snake_case")]
pub enum JobCommand {
    Submit(Box<SubmitArgs>),
    Ps(Listing),
    Logs {
        job: String,
        tail: Option<u32>,
        user: Option<String>,
    },
    Cancel {
        job: String,
        user: Option<String>,
    },
    Templates,
    Whoami,
}

/// A resource by name: the caller's, or another user's with `--user` (admins).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    pub user: Option<String>,
}

/// Whose things `ps` lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Listing {
    pub all: bool,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// GPUs asked for: a count, optionally of one type (`--gpu` is one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuRequest {
    pub kind: Option<String>,
    pub count: u32,
}

/// CPUs, memory and GPUs asked for; `None` is "the default".
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpus_milli: Option<u32>,
    /// Bytes.
    pub memory: Option<u64>,
    pub gpus: Option<GpuRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortSpec {
    pub port: u16,
    pub proto: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RunArgs {
    pub name: Option<String>,
    /// As the user typed it (resolved by `images`).
    pub image: Option<String>,
    pub template: Option<String>,
    pub resources: Resources,
    pub ports: Vec<PortSpec>,
    pub env: Vec<(String, String)>,
    pub private: bool,
    pub ip: bool,
    pub wait: bool,
    /// A course's environment instead of an image (`/course run`).
    pub course: Option<String>,
    /// The words after `--`.
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SubmitArgs {
    pub template: Option<String>,
    pub image: Option<String>,
    /// Run in a course's environment (its SIF) instead of an image.
    pub course: Option<String>,
    pub resources: Resources,
    /// Seconds.
    pub time: Option<u64>,
    pub name: Option<String>,
    pub partition: Option<String>,
    pub env: Vec<(String, String)>,
    pub chdir: Option<String>,
    pub script: Option<String>,
    pub dry_run: bool,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TokenAction {
    List,
    New,
    Revoke { id: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BuildAction {
    Status,
    Enable {
        project: Option<String>,
        runner: bool,
    },
    Disable {
        project: Option<String>,
    },
    Run {
        project: Option<String>,
        git_ref: Option<String>,
    },
}

impl BuildAction {
    pub fn name(&self) -> &'static str {
        match self {
            BuildAction::Status => "status",
            BuildAction::Enable { .. } => "enable",
            BuildAction::Disable { .. } => "disable",
            BuildAction::Run { .. } => "run",
        }
    }
}

fn text(inv: &Invocation, flag: &str) -> Option<String> {
    inv.text(flag).map(str::to_string)
}

fn arg(inv: &Invocation, name: &str) -> Option<String> {
    inv.arg_text(name).map(str::to_string)
}

fn texts(inv: &Invocation, flag: &str) -> Vec<String> {
    inv.values(flag)
        .iter()
        .filter_map(|v| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn count(inv: &Invocation, flag: &str) -> Option<u32> {
    match inv.value(flag) {
        Some(Value::Count(n)) => Some(*n),
        _ => None,
    }
}

fn resources(inv: &Invocation) -> Resources {
    let gpus = match inv.value("gpus") {
        Some(Value::Gpus { kind, count }) => Some(GpuRequest {
            kind: kind.clone(),
            count: *count,
        }),
        _ if inv.has("gpu") => Some(GpuRequest {
            kind: None,
            count: 1,
        }),
        _ => None,
    };
    Resources {
        cpus_milli: match inv.value("cpus") {
            Some(Value::MilliCpus(m)) => Some(*m),
            _ => None,
        },
        memory: match inv.value("memory") {
            Some(Value::Size(b)) => Some(*b),
            _ => None,
        },
        gpus,
    }
}

fn env(inv: &Invocation) -> Vec<(String, String)> {
    inv.values("env")
        .iter()
        .filter_map(|v| match v {
            Value::Env { name, value } => Some((name.clone(), value.clone())),
            _ => None,
        })
        .collect()
}

fn target(inv: &Invocation, arg_name: &str) -> Target {
    Target {
        name: arg(inv, arg_name).unwrap_or_default(),
        user: text(inv, "user"),
    }
}

fn listing(inv: &Invocation) -> Listing {
    Listing {
        all: inv.has("all"),
        user: text(inv, "user"),
        group: text(inv, "group"),
    }
}

impl Command {
    /// What an invocation means. The spec and this function name the same subcommands;
    /// the test `every_subcommand_has_a_type` keeps them in step.
    pub fn of(inv: &Invocation) -> Option<Command> {
        use ContainerCommand as C;
        use JobCommand as J;
        let image = || arg(inv, "IMAGE").unwrap_or_default();
        Some(match (inv.program, inv.sub) {
            (Program::Container, "run") => Command::Container(C::Run(RunArgs {
                name: text(inv, "name"),
                image: arg(inv, "IMAGE"),
                template: text(inv, "template"),
                resources: resources(inv),
                ports: inv
                    .values("port")
                    .iter()
                    .filter_map(|v| match v {
                        Value::Port { port, proto } => Some(PortSpec {
                            port: *port,
                            proto: proto.clone(),
                        }),
                        _ => None,
                    })
                    .collect(),
                env: env(inv),
                private: inv.has("private"),
                ip: inv.has("ip"),
                course: text(inv, "course"),
                wait: inv.has("wait"),
                command: inv.command.clone(),
            })),
            (Program::Container, "ps") => Command::Container(C::Ps(listing(inv))),
            (Program::Container, "logs") => Command::Container(C::Logs {
                target: target(inv, "NAME"),
                tail: count(inv, "tail"),
            }),
            (Program::Container, "exec") => Command::Container(C::Exec {
                target: target(inv, "NAME"),
                command: inv.command.clone().unwrap_or_default(),
            }),
            (Program::Container, "stop") => Command::Container(C::Stop(target(inv, "NAME"))),
            (Program::Container, "start") => Command::Container(C::Start(target(inv, "NAME"))),
            (Program::Container, "extend") => Command::Container(C::Extend {
                target: target(inv, "NAME"),
                time: match inv.args.get("TIME") {
                    Some(Value::Duration(s)) => Some(*s),
                    _ => None,
                },
            }),
            (Program::Container, "rm") => Command::Container(C::Rm {
                target: target(inv, "NAME"),
                force: inv.has("force"),
            }),
            (Program::Container, "inspect") => Command::Container(C::Inspect(target(inv, "NAME"))),
            (Program::Container, "images") => Command::Container(C::Images {
                shared: inv.has("shared"),
                library: inv.has("library"),
                user: text(inv, "user"),
            }),
            (Program::Container, "share") => Command::Container(C::Share {
                image: image(),
                with: texts(inv, "with"),
                description: text(inv, "description"),
            }),
            (Program::Container, "unshare") => Command::Container(C::Unshare {
                image: image(),
                with: texts(inv, "with"),
            }),
            (Program::Container, "rmi") => Command::Container(C::Rmi {
                image: image(),
                user: text(inv, "user"),
            }),
            (Program::Container, "sif") => Command::Container(C::Sif { image: image() }),
            (Program::Container, "templates") => Command::Container(C::Templates),
            (Program::Container, "token") => {
                Command::Container(C::Token(match inv.arg_text("ACTION") {
                    Some("new") => TokenAction::New,
                    Some("revoke") => TokenAction::Revoke { id: arg(inv, "ID") },
                    _ => TokenAction::List,
                }))
            }
            (Program::Container, "build") => {
                let project = arg(inv, "PROJECT");
                Command::Container(C::Build(match inv.arg_text("ACTION") {
                    Some("enable") => BuildAction::Enable {
                        project,
                        runner: inv.has("runner"),
                    },
                    Some("disable") => BuildAction::Disable { project },
                    Some("run") => BuildAction::Run {
                        project,
                        git_ref: arg(inv, "REF"),
                    },
                    _ => BuildAction::Status,
                }))
            }
            (Program::Container, "info") => Command::Container(C::Info),
            (Program::Container, "blades") => Command::Container(C::Blades),
            (Program::Container, "drain") => Command::Container(C::Drain {
                blade: arg(inv, "BLADE").unwrap_or_default(),
                undo: inv.has("undo"),
            }),
            (Program::Container, "whoami") => Command::Container(C::Whoami),
            (Program::Job, "submit") => Command::Job(J::Submit(Box::new(SubmitArgs {
                template: text(inv, "template"),
                image: text(inv, "image"),
                course: text(inv, "course"),
                resources: resources(inv),
                time: match inv.value("time") {
                    Some(Value::Duration(s)) => Some(*s),
                    _ => None,
                },
                name: text(inv, "name"),
                partition: text(inv, "partition"),
                env: env(inv),
                chdir: text(inv, "chdir"),
                script: text(inv, "script"),
                dry_run: inv.has("dry-run"),
                command: inv.command.clone(),
            }))),
            (Program::Job, "ps") => Command::Job(J::Ps(listing(inv))),
            (Program::Job, "logs") => Command::Job(J::Logs {
                job: arg(inv, "JOBID").unwrap_or_default(),
                tail: count(inv, "tail"),
                user: text(inv, "user"),
            }),
            (Program::Job, "cancel") => Command::Job(J::Cancel {
                job: arg(inv, "JOBID").unwrap_or_default(),
                user: text(inv, "user"),
            }),
            (Program::Job, "templates") => Command::Job(J::Templates),
            (Program::Job, "whoami") => Command::Job(J::Whoami),
            (Program::Course, "list") => Command::Course(CourseCommand::List {
                all: inv.has("all"),
            }),
            (Program::Course, "run") => Command::Course(CourseCommand::Run {
                course: arg(inv, "COURSE").unwrap_or_default(),
            }),
            (Program::Course, "status") => Command::Course(CourseCommand::Status {
                course: arg(inv, "COURSE").unwrap_or_default(),
            }),
            (Program::Course, "ps") => Command::Course(CourseCommand::Ps {
                course: arg(inv, "COURSE").unwrap_or_default(),
            }),
            (Program::Course, "enable") => Command::Course(CourseCommand::Enable {
                project: arg(inv, "PROJECT").unwrap_or_default(),
            }),
            (Program::Course, "disable") => Command::Course(CourseCommand::Disable {
                project: arg(inv, "PROJECT").unwrap_or_default(),
            }),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{parse, Parsed};

    fn typed(program: Program, text: &str) -> Command {
        match parse(program, text) {
            Ok(Parsed::Invocation(inv)) => Command::of(&inv).expect("typed"),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn every_subcommand_has_a_type() {
        for prog in Program::ALL {
            for s in prog.spec().subs {
                for e in s.examples {
                    let text = e.strip_prefix(prog.slash()).unwrap().trim_start();
                    let _ = typed(prog, text);
                }
            }
        }
    }

    #[test]
    fn snapshots_of_typed_commands() {
        let cases = [
            (Program::Container, "run --gpu --port 8888 myimg"),
            (
                Program::Container,
                "run --name web --port=80 --port 53/udp --memory 2G --cpus 1.5 --env A=b myimg:1 -- sh -c x",
            ),
            (Program::Container, "run --gpus tesla:2 --template pytorch --private --ip --wait"),
            (Program::Container, "logs --tail 20 --user bob web"),
            (Program::Container, "exec web -- ls -l"),
            (Program::Container, "rm --force web"),
            (Program::Container, "ps --group ai-course --all"),
            (Program::Container, "share myimg:1 --with bob --with ai --description \"hi\""),
            (Program::Container, "token revoke 3"),
            (Program::Container, "build run alice/proj v2"),
            (Program::Container, "build enable alice/proj --runner"),
            (Program::Container, "build status"),
            (Program::Container, "drain b1 --undo"),
            (
                Program::Job,
                "submit --image myimg:1 --gpus 1 --time 1-12:00:00 --memory 8G --chdir runs -- python3 train.py",
            ),
            (Program::Job, "submit --template pytorch --script jobs/train.sh --dry-run"),
            (Program::Job, "logs 42 --tail 5"),
            (Program::Job, "cancel 42 --user bob"),
            (Program::Course, "run ml101"),
            (Program::Course, "enable courses/ml101"),
            (Program::Course, "list --all"),
        ];
        let out: Vec<_> = cases
            .iter()
            .map(|(prog, text)| {
                serde_json::json!({"input": format!("{} {}", prog.slash(), text), "typed": typed(*prog, text)})
            })
            .collect();
        insta::assert_json_snapshot!("typed_commands", out);
    }
}
