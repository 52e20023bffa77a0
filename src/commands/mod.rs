//! The command grammar of `/container` and `/job`: pure, no I/O.
//!
//! `spec` defines every subcommand and flag once; `parse` turns the text
//! Mattermost sends into a validated [`Parsed`]; `help` renders the same
//! definitions; `values` types sizes, durations and the rest.

pub mod help;
pub mod lexer;
pub mod parse;
pub mod spec;
pub mod typed;

pub use crate::values;
pub use crate::values::Value;
pub use parse::{parse, Invocation, Parsed};
pub use spec::Program;
pub use typed::{BuildAction, Command, ContainerCommand, JobCommand, TokenAction};

/// The text of a help reply.
pub fn help_text(program: Program, topic: Option<&str>) -> String {
    match topic.and_then(|t| program.spec().sub(t)) {
        Some(sub) => help::detail(program, sub),
        None => help::overview(program),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(program: Program, text: &str) -> serde_json::Value {
        match parse(program, text) {
            Ok(v) => serde_json::to_value(v).unwrap(),
            Err(e) => serde_json::json!({"error": e.key, "message": e.to_string()}),
        }
    }

    #[test]
    fn snapshots_of_parsed_commands() {
        let cases = [
            (Program::Container, "run --gpu --port 8888 myimg"),
            (
                Program::Container,
                "run --name web --port=80 --port 53/udp --memory 2G --cpus 1.5 myimg:1",
            ),
            (
                Program::Container,
                "run --env \"GREETING=hello world\" --mem 512M myimg -- python3 app.py --port 3",
            ),
            (
                Program::Container,
                "ｒｕｎ　—ｇｐｕｓ　ｔｅｓｌａ：２ myimg",
            ),
            (Program::Container, "run --template pytorch"),
            (Program::Container, "ps --all"),
            (Program::Container, "exec web -- ls -l"),
            (Program::Container, "token revoke 3"),
            (Program::Container, "build enable alice/proj --runner"),
            (Program::Container, ""),
            (Program::Container, "help run"),
            (Program::Container, "run --help"),
            (
                Program::Job,
                "submit --image myimg:1 --gpus 1 --time 1-12:00:00 -- python3 train.py",
            ),
            (
                Program::Job,
                "submit --template pytorch --script jobs/train.sh --dry-run",
            ),
            // errors
            (Program::Container, "rnu myimg"),
            (Program::Container, "run --gpuz 1 myimg"),
            (Program::Container, "run --memory lots myimg"),
            (Program::Container, "run --memory"),
            (Program::Container, "run --gpu --gpus 2 myimg"),
            (Program::Container, "run --name Web myimg"),
            (Program::Container, "run --private=yes myimg"),
            (Program::Container, "run --cpus 2 --cpus 3 myimg"),
            (Program::Container, "logs"),
            (Program::Container, "logs a b"),
            (Program::Container, "exec web"),
            (Program::Container, "stop web -- x"),
            (Program::Container, "run -p 80 myimg"),
            (Program::Container, "run docker-archive:/tmp/x.tar"),
            (Program::Container, "run --env \"A=b"),
            (Program::Job, "submit --image x"),
            (Program::Job, "submit --script a.sh -- b"),
            (Program::Job, "submit --script ../x.sh"),
            (Program::Job, "submit --time 90 -- x"),
            (Program::Job, "help nope"),
        ];
        let out: Vec<_> = cases
            .iter()
            .map(|(prog, text)| serde_json::json!({"input": format!("{} {}", prog.slash(), text), "output": p(*prog, text)}))
            .collect();
        insta::assert_json_snapshot!("parsed_commands", out);
    }

    #[test]
    fn snapshots_of_help() {
        let mut all = String::new();
        for prog in Program::ALL {
            all.push_str(&help_text(prog, None));
            all.push_str("\n\n-----\n\n");
            for s in prog.spec().subs {
                all.push_str(&help_text(prog, Some(s.name)));
                all.push_str("\n-----\n\n");
            }
        }
        insta::assert_snapshot!("help", all);
    }

    #[test]
    fn every_example_parses() {
        for prog in Program::ALL {
            for s in prog.spec().subs {
                for e in s.examples {
                    let text = e.strip_prefix(prog.slash()).unwrap().trim_start();
                    assert!(
                        matches!(parse(prog, text), Ok(Parsed::Invocation(_))),
                        "{e}: {:?}",
                        parse(prog, text)
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            for prog in Program::ALL {
                if let Err(e) = parse(prog, &text) {
                    // Every error renders to a non-empty, key-free message.
                    let m = e.to_string();
                    prop_assert!(!m.is_empty() && m != e.key);
                }
            }
        }

        #[test]
        fn flag_soup_never_panics(words in proptest::collection::vec(
            prop_oneof![Just("run".to_string()), Just("--".to_string()), Just("--gpu".to_string()),
                        Just("--gpus".to_string()), Just("--memory".to_string()), Just("--env".to_string()),
                        Just("—port".to_string()), Just("\"".to_string()), "[a-z0-9=:./-]{0,12}"], 0..12)) {
            let text = words.join(" ");
            for prog in Program::ALL {
                let _ = parse(prog, &text);
            }
        }
    }
}
