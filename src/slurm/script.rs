//! The batch script shisa writes for a job: resource lines come from sbatch's
//! arguments (never the script), so the script only runs the launcher on the
//! image's SIF and records the exit code in the job directory (a finished job
//! leaves Slurm's view after MinJobAge when there is no accounting storage).
//!
//! Everything user-given is single-quoted for POSIX sh after refusing control
//! characters, so the script says exactly what was asked (a property test
//! runs the script through `sh` and compares the words).

use std::path::Path;

/// User text that may go into a script: no control characters (newlines included).
pub fn check_text(s: &str) -> Result<(), String> {
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "control character U+{:04X} is not allowed",
            c as u32
        )),
        None => Ok(()),
    }
}

/// One sh word: `'…'`, with `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub struct Script<'a> {
    pub job_dir: &'a Path,
    pub workdir: &'a Path,
    /// Environment for the command: names are `[A-Za-z_][A-Za-z0-9_]*` (checked by the grammar).
    pub env: &'a [(String, String)],
    /// The launcher and its arguments (`apptainer exec --nv`), then the SIF, then the command.
    pub launcher: &'a [String],
    pub sif: &'a Path,
    pub command: &'a [String],
}

pub fn render(s: &Script) -> Result<String, String> {
    for w in s.command.iter().chain(s.launcher.iter()) {
        check_text(w)?;
    }
    for (k, v) in s.env {
        check_text(v)?;
        if k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("`{k}` is not a variable name"));
        }
    }
    let p = |x: &Path| quote(&x.to_string_lossy());
    let mut out =
        String::from("#!/bin/sh\n# Written by shisa. Resources are on sbatch's command line.\n");
    out.push_str(&format!("cd {} || exit 1\n", p(s.workdir)));
    for (k, v) in s.env {
        out.push_str(&format!("export {k}={}\n", quote(v)));
    }
    let words: Vec<String> = s
        .launcher
        .iter()
        .map(|w| quote(w))
        .chain(std::iter::once(p(s.sif)))
        .chain(s.command.iter().map(|w| quote(w)))
        .collect();
    out.push_str(&words.join(" "));
    out.push('\n');
    out.push_str("code=$?\n");
    out.push_str(&format!(
        "echo \"$code\" > {}\nexit \"$code\"\n",
        p(&s.job_dir.join("exit-code"))
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_characters_are_refused() {
        assert!(check_text("a\nb").is_err() && check_text("a\u{7}").is_err());
        assert!(check_text("it's $HOME `x` \"y\"").is_ok());
    }

    proptest! {
        // The command words come out of sh exactly as given.
        #[test]
        fn scripts_round_trip(words in proptest::collection::vec("[^\\p{Cc}]{0,12}", 1..5)) {
            let d = tempfile::tempdir().unwrap();
            let launcher = vec!["printf".to_string(), "%s\\n".to_string()];
            let script = render(&Script {
                job_dir: d.path(),
                workdir: d.path(),
                env: &[("X_1".into(), "v'$x".into())],
                launcher: &launcher,
                sif: Path::new("/the image.sif"),
                command: &words,
            }).unwrap();
            let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let mut want = String::from("/the image.sif\n");
            for w in &words { want.push_str(w); want.push('\n'); }
            prop_assert_eq!(text, want);
            prop_assert_eq!(std::fs::read_to_string(d.path().join("exit-code")).unwrap(), "0\n");
        }
    }
}
