//! Help text generated from the same definitions the parser reads.

use super::spec::{Program, SubSpec, Trailing};
use super::values::Kind;

pub fn usage(program: Program, sub: &SubSpec) -> String {
    let mut u = format!("{} {}", program.slash(), sub.name);
    for f in sub.flags {
        if f.kind == Kind::Switch {
            u.push_str(&format!(" [--{}]", f.long));
        } else {
            let dots = if f.repeat { "..." } else { "" };
            u.push_str(&format!(" [--{} {}]{dots}", f.long, f.kind.placeholder()));
        }
    }
    for a in sub.args {
        if a.required {
            u.push_str(&format!(" {}", a.name));
        } else {
            u.push_str(&format!(" [{}]", a.name));
        }
    }
    match sub.trailing {
        Trailing::None => {}
        Trailing::Optional => u.push_str(" [-- CMD...]"),
        Trailing::Required => u.push_str(" -- CMD..."),
    }
    u
}

/// `/container help`: the list of subcommands.
pub fn overview(program: Program) -> String {
    let spec = program.spec();
    let mut out = format!(
        "**{}**: {}\n\n| command | what it does |\n|---|---|\n",
        program.slash(),
        spec.summary
    );
    for s in spec.subs {
        out.push_str(&format!(
            "| `{} {}` | {} |\n",
            program.slash(),
            s.name,
            s.summary
        ));
    }
    out.push_str(&format!(
        "\nType `{} help COMMAND` for its options and examples. Sizes take a unit (`512M`, `8G`); times look like `30m`, `2h`, `1d`.",
        program.slash()
    ));
    out
}

/// `/container help run`: usage, options and examples of one subcommand.
pub fn detail(program: Program, sub: &SubSpec) -> String {
    let mut out = format!("`{}`\n\n{}\n", usage(program, sub), sub.summary);
    if !sub.args.is_empty() {
        out.push_str("\nArguments:\n");
        for a in sub.args {
            let opt = if a.required { "" } else { " (optional)" };
            out.push_str(&format!("- `{}`{opt}: {}\n", a.name, a.help));
        }
    }
    if !sub.flags.is_empty() {
        out.push_str("\nOptions:\n");
        for f in sub.flags {
            let mut names = format!("--{}", f.long);
            if f.kind != Kind::Switch {
                names.push(' ');
                names.push_str(f.kind.placeholder());
            }
            for a in f.aliases {
                names.push_str(&format!("`, `--{a}"));
            }
            out.push_str(&format!("- `{names}`: {}\n", f.help));
        }
    }
    match sub.trailing {
        Trailing::Optional => {
            out.push_str("- `-- CMD...`: the command to run instead of the image's default\n")
        }
        Trailing::Required => out.push_str("- `-- CMD...`: the command to run\n"),
        Trailing::None => {}
    }
    if !sub.one_of.is_empty() {
        let opts: Vec<String> = sub
            .one_of
            .iter()
            .map(|o| {
                if *o == "--" {
                    "`-- CMD`".into()
                } else {
                    format!("`--{o}`")
                }
            })
            .collect();
        out.push_str(&format!("\nGive exactly one of {}.\n", opts.join(" or ")));
    }
    out.push_str("\nExamples:\n");
    for e in sub.examples {
        out.push_str(&format!("- `{e}`\n"));
    }
    out
}
