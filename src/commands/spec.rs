//! The command definitions: one table both the parser and the help text read,
//! so what `help` says and what the parser accepts cannot drift apart.

use super::values::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    Container,
    Job,
    Course,
}

impl Program {
    pub fn slash(self) -> &'static str {
        match self {
            Program::Container => "/container",
            Program::Job => "/job",
            Program::Course => "/course",
        }
    }
    pub fn from_slash(s: &str) -> Option<Program> {
        match s.trim_start_matches('/') {
            "container" => Some(Program::Container),
            "job" => Some(Program::Job),
            "course" => Some(Program::Course),
            _ => None,
        }
    }
    pub fn spec(self) -> &'static ProgramSpec {
        match self {
            Program::Container => &CONTAINER,
            Program::Job => &JOB,
            Program::Course => &COURSE,
        }
    }
    pub const ALL: [Program; 3] = [Program::Container, Program::Job, Program::Course];
}

pub struct ProgramSpec {
    pub program: Program,
    pub summary: &'static str,
    pub subs: &'static [SubSpec],
}

pub struct SubSpec {
    pub name: &'static str,
    pub summary: &'static str,
    pub flags: &'static [FlagSpec],
    pub args: &'static [ArgSpec],
    pub trailing: Trailing,
    /// Flags of which exactly one must be given (or a trailing command, for `-- CMD`).
    pub one_of: &'static [&'static str],
    pub examples: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailing {
    None,
    Optional,
    Required,
}

pub struct FlagSpec {
    pub long: &'static str,
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    pub repeat: bool,
    pub help: &'static str,
}

pub struct ArgSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub help: &'static str,
}

impl SubSpec {
    pub fn flag(&'static self, word: &str) -> Option<&'static FlagSpec> {
        self.flags
            .iter()
            .find(|f| f.long == word || f.aliases.contains(&word))
    }
}

impl ProgramSpec {
    pub fn sub(&'static self, name: &str) -> Option<&'static SubSpec> {
        self.subs.iter().find(|s| s.name == name)
    }
}

// One flag vocabulary for both commands.
const fn flag(long: &'static str, kind: Kind, help: &'static str) -> FlagSpec {
    FlagSpec {
        long,
        aliases: &[],
        kind,
        repeat: false,
        help,
    }
}
const GPUS: FlagSpec = FlagSpec {
    long: "gpus",
    aliases: &[],
    kind: Kind::Gpus,
    repeat: false,
    help: "number of GPUs, optionally with a type (`tesla:1`)",
};
const GPU: FlagSpec = flag("gpu", Kind::Switch, "one GPU; the same as `--gpus 1`");
const CPUS: FlagSpec = flag("cpus", Kind::Cpus, "CPUs, fractions allowed (`0.5`)");
const MEMORY: FlagSpec = FlagSpec {
    long: "memory",
    aliases: &["mem"],
    kind: Kind::Size,
    repeat: false,
    help: "memory limit with a unit (`512M`, `8G`); `--mem` is the same",
};
const ENV: FlagSpec = FlagSpec {
    long: "env",
    aliases: &[],
    kind: Kind::Env,
    repeat: true,
    help: "an environment variable `NAME=value`; repeat for more",
};
const TEMPLATE: FlagSpec = flag(
    "template",
    Kind::Id,
    "start from an admin template (see `templates`)",
);
const USER: FlagSpec = flag(
    "user",
    Kind::User,
    "act on another user's resource (admins only)",
);
const GROUP: FlagSpec = flag(
    "group",
    Kind::Group,
    "show the members of a course group (instructors)",
);
const ALL: FlagSpec = flag("all", Kind::Switch, "include stopped and finished ones");
const TAIL: FlagSpec = flag(
    "tail",
    Kind::Count { min: 1, max: 10000 },
    "only the last N lines (default 50)",
);
const NAME_ARG: ArgSpec = ArgSpec {
    name: "NAME",
    kind: Kind::Name,
    required: true,
    help: "the container's name",
};
const IMAGE_ARG: ArgSpec = ArgSpec {
    name: "IMAGE",
    kind: Kind::Image,
    required: true,
    help: "an image: `myimg:1`, or `bob/myimg:1` if shared",
};

pub static CONTAINER: ProgramSpec = ProgramSpec {
    program: Program::Container,
    summary: "Containers and images on the department's blades.",
    subs: &[
        SubSpec {
            name: "run",
            summary: "Start a container from an image or a template, and say where to reach it.",
            flags: &[
                flag(
                    "name",
                    Kind::Name,
                    "the container's name (default: generated)",
                ),
                GPUS,
                GPU,
                FlagSpec {
                    long: "port",
                    aliases: &["publish"],
                    kind: Kind::Port,
                    repeat: true,
                    help: "publish a container port (`8888`, `53/udp`); repeat for more",
                },
                ENV,
                CPUS,
                MEMORY,
                flag(
                    "private",
                    Kind::Switch,
                    "publish ports on the blade's loopback only",
                ),
                TEMPLATE,
                flag(
                    "ip",
                    Kind::Switch,
                    "lease an address from the blade's IP pool",
                ),
                flag(
                    "wait",
                    Kind::Switch,
                    "reply only when the container is running (or failed)",
                ),
                flag(
                    "course",
                    Kind::Id,
                    "your container of a course's environment (the same as `/course run`)",
                ),
            ],
            args: &[ArgSpec {
                required: false,
                ..IMAGE_ARG
            }],
            trailing: Trailing::Optional,
            one_of: &[],
            examples: &[
                "/container run --gpu --port 8888 myimg",
                "/container run --course ml101",
                "/container run --name web --port 80 --memory 2G --cpus 1.5 myimg:1",
                "/container run --env \"GREETING=hello world\" myimg -- python3 app.py",
                "/container run --template pytorch --gpus tesla:1",
            ],
        },
        SubSpec {
            name: "ps",
            summary: "List your containers.",
            flags: &[ALL, USER, GROUP],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container ps", "/container ps --all"],
        },
        SubSpec {
            name: "logs",
            summary: "Show a container's output.",
            flags: &[TAIL, USER],
            args: &[NAME_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container logs web", "/container logs --tail 20 web"],
        },
        SubSpec {
            name: "exec",
            summary: "Run a command inside a running container, as you.",
            flags: &[USER],
            args: &[NAME_ARG],
            trailing: Trailing::Required,
            one_of: &[],
            examples: &["/container exec web -- ls -l /data"],
        },
        SubSpec {
            name: "stop",
            summary: "Stop a container (its data stays).",
            flags: &[USER],
            args: &[NAME_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container stop web"],
        },
        SubSpec {
            name: "extend",
            summary: "Keep a container from being stopped or removed for idleness or age.",
            flags: &[USER],
            args: &[
                NAME_ARG,
                ArgSpec {
                    name: "TIME",
                    kind: Kind::Duration,
                    required: false,
                    help: "how long from now (`12h`, `3d`); the most your role allows if left out",
                },
            ],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container extend web", "/container extend web 2d"],
        },
        SubSpec {
            name: "start",
            summary: "Start a stopped container again.",
            flags: &[USER],
            args: &[NAME_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container start web"],
        },
        SubSpec {
            name: "rm",
            summary: "Remove a container and release its ports, address and GPUs.",
            flags: &[
                flag("force", Kind::Switch, "remove it even if it is running"),
                USER,
            ],
            args: &[NAME_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container rm web", "/container rm --force web"],
        },
        SubSpec {
            name: "inspect",
            summary: "Show a container's details: image, ports, limits, state.",
            flags: &[USER],
            args: &[NAME_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container inspect web"],
        },
        SubSpec {
            name: "images",
            summary: "List your images (and those shared with you).",
            flags: &[
                flag("shared", Kind::Switch, "images others shared with you"),
                flag("library", Kind::Switch, "the admin-curated library"),
                USER,
            ],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container images", "/container images --shared"],
        },
        SubSpec {
            name: "share",
            summary: "Share one of your images with a user, a group or everyone.",
            flags: &[
                FlagSpec {
                    long: "with",
                    aliases: &[],
                    kind: Kind::Id,
                    repeat: true,
                    help: "a user, a group or `all`; repeat for more",
                },
                flag(
                    "description",
                    Kind::Text,
                    "what the image is for, shown to others",
                ),
            ],
            args: &[IMAGE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &[
                "/container share myimg:1 --with bob",
                "/container share myimg --with all --description \"PyTorch 2 with CUDA\"",
            ],
        },
        SubSpec {
            name: "unshare",
            summary: "Stop sharing an image.",
            flags: &[FlagSpec {
                long: "with",
                aliases: &[],
                kind: Kind::Id,
                repeat: true,
                help: "stop sharing with this user or group only",
            }],
            args: &[IMAGE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container unshare myimg:1"],
        },
        SubSpec {
            name: "rmi",
            summary: "Delete one of your images.",
            flags: &[USER],
            args: &[IMAGE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container rmi myimg:1"],
        },
        SubSpec {
            name: "sif",
            summary: "Convert an image to a Singularity (SIF) file and give you its link.",
            flags: &[],
            args: &[IMAGE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container sif myimg:1"],
        },
        SubSpec {
            name: "templates",
            summary: "List the admins' templates.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container templates"],
        },
        SubSpec {
            name: "token",
            summary: "Manage your personal registry tokens.",
            flags: &[],
            args: &[
                ArgSpec {
                    name: "ACTION",
                    kind: Kind::Choice(&["list", "new", "revoke"]),
                    required: false,
                    help: "`list` (default), `new` or `revoke`",
                },
                ArgSpec {
                    name: "ID",
                    kind: Kind::Id,
                    required: false,
                    help: "the token to revoke",
                },
            ],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container token new", "/container token revoke 3"],
        },
        SubSpec {
            name: "build",
            summary: "Build images from a GitLab project's Containerfile.",
            flags: &[flag(
                "runner",
                Kind::Switch,
                "give the project its own GitLab runner",
            )],
            args: &[
                ArgSpec {
                    name: "ACTION",
                    kind: Kind::Choice(&["enable", "disable", "status", "run"]),
                    required: true,
                    help: "`enable`, `disable`, `status` or `run` (build now)",
                },
                ArgSpec {
                    name: "PROJECT",
                    kind: Kind::Text,
                    required: false,
                    help: "the GitLab project path, `group/project`",
                },
                ArgSpec {
                    name: "REF",
                    kind: Kind::Text,
                    required: false,
                    help: "with `run`: the branch, tag or commit (default: the default branch)",
                },
            ],
            trailing: Trailing::None,
            one_of: &[],
            examples: &[
                "/container build enable alice/mymodel",
                "/container build enable alice/mymodel --runner",
                "/container build status",
                "/container build run alice/mymodel main",
            ],
        },
        SubSpec {
            name: "info",
            summary: "Show the blades and their Podman versions.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container info"],
        },
        SubSpec {
            name: "blades",
            summary: "Show each blade's capacity and health.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container blades"],
        },
        SubSpec {
            name: "drain",
            summary: "Stop placing new containers on a blade (admins).",
            flags: &[flag(
                "undo",
                Kind::Switch,
                "allow placement on the blade again",
            )],
            args: &[ArgSpec {
                name: "BLADE",
                kind: Kind::Id,
                required: true,
                help: "the blade's name",
            }],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container drain blade2", "/container drain --undo blade2"],
        },
        SubSpec {
            name: "whoami",
            summary: "Show which department account you are, and your role.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/container whoami"],
        },
    ],
};

pub static JOB: ProgramSpec = ProgramSpec {
    program: Program::Job,
    summary: "Batch jobs on the Slurm cluster, in your own image.",
    subs: &[
        SubSpec {
            name: "submit",
            summary:
                "Submit a batch job that runs in your image; its log tail comes back when it ends.",
            flags: &[
                TEMPLATE,
                flag("image", Kind::Image, "the image to run in (`myimg:1`)"),
                flag(
                    "course",
                    Kind::Id,
                    "run in a course's environment (`ml101`) instead of an image",
                ),
                GPUS,
                GPU,
                CPUS,
                MEMORY,
                flag(
                    "time",
                    Kind::Duration,
                    "time limit (`30m`, `2h`, `1d`, `1-12:00:00`)",
                ),
                flag("name", Kind::Name, "the job's name"),
                flag("partition", Kind::Id, "the Slurm partition"),
                ENV,
                flag(
                    "chdir",
                    Kind::Path,
                    "working directory, relative to your home",
                ),
                flag(
                    "script",
                    Kind::Path,
                    "run this script from your home directory inside the image",
                ),
                flag(
                    "dry-run",
                    Kind::Switch,
                    "show the generated job script without submitting",
                ),
            ],
            args: &[],
            trailing: Trailing::Optional,
            one_of: &["script", "--"],
            examples: &[
                "/job submit --image myimg:1 --gpus 1 --time 2h -- python3 train.py",
                "/job submit --template pytorch --script jobs/train.sh",
                "/job submit --image myimg --memory 8G --cpus 4 --dry-run -- ./run.sh",
                "/job submit --course ml101 --time 1h -- python3 lab1.py",
            ],
        },
        SubSpec {
            name: "ps",
            summary: "List your jobs.",
            flags: &[ALL, USER, GROUP],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/job ps", "/job ps --all"],
        },
        SubSpec {
            name: "logs",
            summary: "Show a job's output.",
            flags: &[TAIL, USER],
            args: &[ArgSpec {
                name: "JOBID",
                kind: Kind::Id,
                required: true,
                help: "the job's id from `/job ps`",
            }],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/job logs 42", "/job logs --tail 50 42"],
        },
        SubSpec {
            name: "cancel",
            summary: "Cancel one of your jobs.",
            flags: &[USER],
            args: &[ArgSpec {
                name: "JOBID",
                kind: Kind::Id,
                required: true,
                help: "the job's id from `/job ps`",
            }],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/job cancel 42"],
        },
        SubSpec {
            name: "templates",
            summary: "List the admins' job templates.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/job templates"],
        },
        SubSpec {
            name: "whoami",
            summary: "Show which department account you are, and your role.",
            flags: &[],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/job whoami"],
        },
    ],
};

const COURSE_ARG: ArgSpec = ArgSpec {
    name: "COURSE",
    kind: Kind::Id,
    required: true,
    help: "the course's id (`ml101`), from `/course list`",
};
const PROJECT_ARG: ArgSpec = ArgSpec {
    name: "PROJECT",
    kind: Kind::Path,
    required: true,
    help: "the course's GitLab project (`courses/ml101`)",
};

pub static COURSE: ProgramSpec = ProgramSpec {
    program: Program::Course,
    summary: "Course environments: the same container for every student of a course, ready before each lecture.",
    subs: &[
        SubSpec {
            name: "list",
            summary: "Your courses and the next lecture of each.",
            flags: &[flag("all", Kind::Switch, "every course (admins)")],
            args: &[],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course list", "/course list --all"],
        },
        SubSpec {
            name: "run",
            summary: "Start your container of a course's environment (its image and resources).",
            flags: &[],
            args: &[COURSE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course run ml101"],
        },
        SubSpec {
            name: "status",
            summary: "A course's version, readiness on each blade and students running (instructors).",
            flags: &[],
            args: &[COURSE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course status ml101"],
        },
        SubSpec {
            name: "ps",
            summary: "Who runs what in a course (instructors, read-only).",
            flags: &[],
            args: &[COURSE_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course ps ml101"],
        },
        SubSpec {
            name: "enable",
            summary: "Manage a course from its GitLab project: plans on merge requests, applied on merge (instructors who maintain it).",
            flags: &[],
            args: &[PROJECT_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course enable courses/ml101"],
        },
        SubSpec {
            name: "disable",
            summary: "Stop managing a course's project; its course is no longer offered.",
            flags: &[],
            args: &[PROJECT_ARG],
            trailing: Trailing::None,
            one_of: &[],
            examples: &["/course disable courses/ml101"],
        },
    ],
};
