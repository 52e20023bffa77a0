//! The layer check: reads `src/` and fails on any `use crate::…` that goes up the layers
//! written in `docs/developers/README.md`, and on any import circle between top-level
//! modules, naming the file and line. A new top-level module must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src/` and its layer; a module may import only modules of a lower
/// layer, or of its own layer when no circle results. Lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &["config", "messages", "values", "error", "sealing"],
    ),
    ("store", &["store"]),
    (
        "adapters",
        &[
            "podman",
            "registry",
            "sif",
            "slurm",
            "identity",
            "gitlab",
            "mattermost",
            "gpus",
            "metrics",
            "usage",
        ],
    ),
    (
        "domain",
        &[
            "access",
            "commands",
            "containers",
            "courses",
            "images",
            "builds",
            "blades",
        ],
    ),
    ("app", &["app"]),
    ("work", &["work"]),
    ("handlers", &["handlers"]),
    ("edge", &["http"]),
    ("entry", &["cli", "main", "lib"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// One `use crate::…` (or any `crate::` path) found in the code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// The top-level module a file of `src/` belongs to: `src/a.rs` and `src/a/…` are `a`.
fn module_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules named by `crate::` paths in one file's text, by line. Comments are
/// skipped; `crate::{a, b::c}` groups count each member.
fn imports_in(file: &str, text: &str) -> Vec<Import> {
    let from = module_of(file);
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = match raw.find("//") {
            Some(i) => &raw[..i],
            None => raw,
        };
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            // `some_crate::` is another crate's path, not ours.
            let before = rest[..i].chars().next_back();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut targets = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            targets.push(std::mem::take(&mut item));
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                targets.push(item);
            } else {
                targets.push(rest.to_string());
            }
            for t in targets {
                let name: String = t
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from && name != "self" {
                    out.push(Import {
                        file: file.to_string(),
                        line: n + 1,
                        from: from.clone(),
                        to: name,
                    });
                }
            }
        }
    }
    out
}

/// Every rule broken by these imports, one line each.
fn violations(imports: &[Import]) -> Vec<String> {
    let mut bad = Vec::new();
    for i in imports {
        match (layer_of(&i.from), layer_of(&i.to)) {
            (None, _) => bad.push(format!(
                "{}:{}: module `{}` has no layer; give it one in tests/layers.rs and docs/developers",
                i.file, i.line, i.from
            )),
            (_, None) => bad.push(format!(
                "{}:{}: `crate::{}` has no layer; give it one in tests/layers.rs and docs/developers",
                i.file, i.line, i.to
            )),
            (Some(a), Some(b)) if b > a => bad.push(format!(
                "{}:{}: `{}` ({}) imports `{}` ({}), a higher layer",
                i.file, i.line, i.from, LAYERS[a].0, i.to, LAYERS[b].0
            )),
            _ => {}
        }
    }
    // Circles between top-level modules. With no upward import, a circle can only run
    // between modules of one layer, so only those edges are followed (an upward import is
    // reported once above, not again as every circle it closes).
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        graph.entry(&i.from).or_default().insert(&i.to);
    }
    for i in imports {
        if layer_of(&i.from) == layer_of(&i.to) && reaches(&graph, &i.to, &i.from) {
            bad.push(format!(
                "{}:{}: `{}` imports `{}`, which imports `{}` back (an import circle)",
                i.file, i.line, i.from, i.to, i.from
            ));
        }
    }
    bad
}

fn reaches(graph: &BTreeMap<&str, BTreeSet<&str>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from];
    while let Some(m) = stack.pop() {
        if m == to {
            return true;
        }
        if seen.insert(m) {
            if let Some(next) = graph.get(m) {
                stack.extend(next.iter().copied());
            }
        }
    }
    false
}

fn read_src(dir: &Path, root: &Path, out: &mut Vec<Import>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            read_src(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap();
            out.extend(imports_in(&rel, &text));
        }
    }
}

#[test]
fn src_follows_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut imports = Vec::new();
    read_src(&root, &root, &mut imports);
    assert!(
        imports.len() > 50,
        "the checker read too little: {}",
        imports.len()
    );
    let bad = violations(&imports);
    assert!(bad.is_empty(), "layer rules broken:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_catches_a_planted_upward_import() {
    let planted = "use crate::store::Store;\n// use crate::handlers::x; (a comment)\n\
                   fn f() { crate::handlers::containers::run(); }\n";
    let found = imports_in("podman/mod.rs", planted);
    assert_eq!(
        found
            .iter()
            .map(|i| (i.to.as_str(), i.line))
            .collect::<Vec<_>>(),
        vec![("store", 1), ("handlers", 3)]
    );
    let bad = violations(&found);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("podman/mod.rs:3: `podman` (adapters) imports `handlers` (handlers)"),
        "{}",
        bad[0]
    );
}

#[test]
fn the_checker_catches_a_circle_and_groups() {
    let mut imports = imports_in("sif/mod.rs", "use crate::{podman::X, store};\n");
    imports.extend(imports_in("podman/mod.rs", "use crate::sif::Y;\n"));
    assert_eq!(imports.len(), 3);
    let bad = violations(&imports);
    assert!(
        bad.iter()
            .any(|b| b.starts_with("podman/mod.rs:1:") && b.contains("circle")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|b| b.starts_with("sif/mod.rs:1:") && b.contains("circle")),
        "{bad:?}"
    );
}

#[test]
fn other_crates_paths_are_not_ours() {
    assert!(imports_in("podman/mod.rs", "use some_crate::handlers;\n").is_empty());
    let bad = violations(&imports_in("newthing.rs", "use crate::store;\n"));
    assert!(bad[0].contains("has no layer"), "{bad:?}");
}
