//! The user reference in bot-commands/ against the parser: every example
//! parses, and everything the parser knows is documented.

use shisa::commands::{parse, Parsed, Program};

fn doc(p: Program) -> String {
    let name = match p {
        Program::Container => "container",
        Program::Job => "job",
        Program::Course => "course",
    };
    std::fs::read_to_string(crate::harness::repo().join(format!("bot-commands/{name}.md"))).unwrap()
}

/// Lines inside ```text blocks that start with the slash command and contain no placeholders.
fn examples(p: Program, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = line.trim() == "```text";
            continue;
        }
        let l = line.trim();
        if in_block
            && l.starts_with(p.slash())
            && !l.contains('|')
            && !l.contains('[')
            && !l
                .chars()
                .any(|c| c.is_ascii_uppercase() && l.contains(&format!(" {c}")))
        {
            out.push(l.to_string());
        }
    }
    // Inline examples: `/container stop web`
    for part in text.split('`').skip(1).step_by(2) {
        if part.starts_with(&format!("{} ", p.slash()))
            && !part.contains('[')
            && !part.contains('|')
            && !part.chars().any(|c| c.is_ascii_uppercase())
        {
            out.push(part.to_string());
        }
    }
    out
}

#[test]
fn every_example_in_the_reference_parses() {
    for p in Program::ALL {
        let text = doc(p);
        let ex = examples(p, &text);
        assert!(
            ex.len() > 10,
            "{}: too few examples found: {ex:?}",
            p.slash()
        );
        for e in ex {
            let rest = e.strip_prefix(p.slash()).unwrap().trim_start();
            match parse(p, rest) {
                Ok(Parsed::Invocation(_)) | Ok(Parsed::Help { .. }) => {}
                Err(err) => panic!("example `{e}` does not parse: {err}"),
            }
        }
    }
}

#[test]
fn everything_the_parser_knows_is_documented() {
    for p in Program::ALL {
        let text = doc(p);
        let mut missing = Vec::new();
        for s in p.spec().subs {
            if !text.contains(&format!("### {}", s.name)) {
                missing.push(format!("section `### {}`", s.name));
            }
            let section = text
                .split(&format!("### {}\n", s.name))
                .nth(1)
                .map(|t| t.split("\n### ").next().unwrap_or(""))
                .unwrap_or("");
            let synopsis = text
                .split("## Synopsis")
                .nth(1)
                .and_then(|t| t.split("## Commands").next())
                .unwrap_or("");
            for f in s.flags {
                for name in std::iter::once(f.long).chain(f.aliases.iter().copied()) {
                    let flag = format!("--{name}");
                    if !section.contains(&flag)
                        && !synopsis
                            .lines()
                            .any(|l| l.contains(s.name) && l.contains(&flag))
                    {
                        missing.push(format!("{} {} {flag}", p.slash(), s.name));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not documented in bot-commands: {missing:?}"
        );
    }
}
