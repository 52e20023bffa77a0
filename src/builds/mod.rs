//! Building an image from a source tree: `podman build` (argument list only, never a
//! shell) against the owner's own build store, root inside the build mapped to an
//! unprivileged host range, under the owner's CPU and memory limits and a time limit; then
//! a push to the department registry with a short-lived credential for that one repository.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A GitLab project path as a repository name: lowercase, `[a-z0-9._-]`
/// components joined by `-` (`Alice/My Model` → `alice-my-model`).
pub fn slug(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let s = out.trim_matches('-').to_string();
    if s.is_empty() {
        "project".into()
    } else {
        s.chars().take(100).collect()
    }
}

/// The images a Containerfile builds from: every `FROM` and every `--from=` of `COPY`/`ADD`
/// that is not an earlier stage's name or index, nor `scratch`. A blade may hold other users'
/// images (pulled for their containers), so each must be checked as the build's owner before
/// a `--pull=never` build can use it. Variables in these references are refused: their value
/// could name anything.
pub fn base_images(containerfile: &str) -> Result<Vec<String>, String> {
    // Join continuation lines, drop comments.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for raw in containerfile.lines() {
        let t = raw.trim();
        if cur.is_empty() && t.starts_with('#') {
            continue;
        }
        if let Some(x) = t.strip_suffix('\\') {
            cur.push_str(x);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let check = |r: &str, stages: &[String], out: &mut Vec<String>| -> Result<(), String> {
        let lower = r.to_ascii_lowercase();
        if lower == "scratch"
            || stages.contains(&lower)
            || r.parse::<usize>().is_ok_and(|i| i < stages.len())
        {
            return Ok(());
        }
        if r.contains('$') {
            return Err(format!("`{r}`: build from a named image, not a variable"));
        }
        if !out.iter().any(|x| x == r) {
            out.push(r.to_string());
        }
        Ok(())
    };
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        let Some(instr) = words.first().map(|w| w.to_ascii_uppercase()) else {
            continue;
        };
        match instr.as_str() {
            "FROM" => {
                let rest: Vec<&str> = words[1..]
                    .iter()
                    .copied()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let Some(image) = rest.first() else {
                    return Err("a FROM without an image".into());
                };
                check(image, &stages, &mut out)?;
                if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("as") {
                    stages.push(rest[2].to_ascii_lowercase());
                } else {
                    stages.push(String::new());
                }
            }
            "COPY" | "ADD" => {
                for w in &words[1..] {
                    if let Some(f) = w.strip_prefix("--from=") {
                        check(f, &stages, &mut out)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// One owner's Podman storage for builds, on the build host. A build runs against it with
/// `--pull=never`, so whatever a Containerfile names (short names matched by suffix, image
/// id prefixes, `RUN --mount=…,from=`, lines an `# escape=` directive re-joins) can only
/// reach an image shisa put there after checking that the owner may use it: the blade's
/// own storage, which holds every user's images, is never a build's. Its `TMPDIR` is its
/// own too, so buildah's `--mount=type=cache` directories are not shared between owners.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    pub conf: Option<PathBuf>,
}

impl Store {
    /// `DIR/OWNER`; an owner name that could leave `dir` is refused.
    pub fn of(dir: &Path, owner: &str, conf: Option<&Path>) -> Result<Store, String> {
        let ok = !owner.is_empty()
            && !owner.starts_with('.')
            && owner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(format!("`{owner}` cannot name a build store"));
        }
        let dir = dir.join(owner);
        let store = Store {
            dir,
            conf: conf.map(Path::to_path_buf),
        };
        for d in [
            store.dir.join("storage"),
            store.dir.join("tmp"),
            store.runroot(),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        }
        Ok(store)
    }

    /// Podman refuses a runroot longer than 50 characters, and it belongs on a tmpfs (it
    /// holds state that ends with a reboot): `/run/shisa-build/` and a hash of the store.
    pub fn runroot(&self) -> PathBuf {
        use sha2::Digest;
        let h = sha2::Sha256::digest(self.dir.as_os_str().as_encoded_bytes());
        PathBuf::from("/run/shisa-build").join(hex::encode(&h[..8]))
    }

    fn podman(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.runroot())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.join("tmp"))
            .env("TMPDIR", self.dir.join("tmp"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(conf) = &self.conf {
            c.env("CONTAINERS_CONF", conf);
        }
        c
    }

    /// Every image held, as (id, names).
    pub async fn images(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        #[derive(serde::Deserialize)]
        struct Row {
            #[serde(rename = "Id")]
            id: String,
            #[serde(rename = "Names", default)]
            names: Option<Vec<String>>,
        }
        let out = self
            .podman()
            .args(["images", "--all", "--format", "json"])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "listing the build store: {}",
            tail(&out.stderr, 5)
        );
        let rows: Vec<Row> = serde_json::from_slice(&out.stdout)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.id, r.names.unwrap_or_default()))
            .collect())
    }

    /// The id of the image named `name`, if held.
    pub async fn image_id(&self, name: &str) -> Option<String> {
        let out = self
            .podman()
            .args(["image", "inspect", "--format", "{{.Id}}", name])
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Remove every image (and with them the layer cache).
    pub async fn clear(&self) -> anyhow::Result<()> {
        let out = self
            .podman()
            .args(["rmi", "--all", "--force"])
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "clearing the build store: {}",
            tail(&out.stderr, 5)
        );
        Ok(())
    }

    /// Copy `image` from the blade at `socket` (an image the blade holds, such as an
    /// administrator's base image) into this store.
    pub async fn load_from(&self, socket: &Path, image: &str) -> anyhow::Result<()> {
        self.transfer(podman(socket), self.podman(), image).await
    }

    /// The reverse: put a built image on the blade (when there is no registry to pull from).
    pub async fn copy_to(&self, socket: &Path, image: &str) -> anyhow::Result<()> {
        self.transfer(self.podman(), podman(socket), image).await
    }

    /// `save` with one Podman, `load` with the other, through a file in the store's tmp.
    async fn transfer(
        &self,
        mut from: tokio::process::Command,
        mut to: tokio::process::Command,
        image: &str,
    ) -> anyhow::Result<()> {
        let file = tempfile::Builder::new()
            .suffix(".tar")
            .tempfile_in(self.dir.join("tmp"))?;
        let out = from
            .args(["save", "--format", "docker-archive", "--output"])
            .arg(file.path())
            .arg(image)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "{}", tail(&out.stderr, 3));
        let out = to
            .arg("load")
            .arg("--input")
            .arg(file.path())
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "{}", tail(&out.stderr, 3));
        Ok(())
    }

    /// Pull `image` from the department registry with a credential for its repository.
    pub async fn pull(
        &self,
        image: &str,
        user: &str,
        password: &str,
        tls_verify: bool,
    ) -> anyhow::Result<()> {
        self.with_credential("pull", image, user, password, tls_verify)
            .await
    }

    /// Push `image` with a credential for its repository.
    pub async fn push(
        &self,
        image: &str,
        user: &str,
        password: &str,
        tls_verify: bool,
    ) -> anyhow::Result<()> {
        self.with_credential("push", image, user, password, tls_verify)
            .await
    }

    async fn with_credential(
        &self,
        verb: &str,
        image: &str,
        user: &str,
        password: &str,
        tls_verify: bool,
    ) -> anyhow::Result<()> {
        use base64::Engine;
        // The credential goes in a private auth file, not on the command line (where `ps` shows it).
        let dir = tempfile::tempdir()?;
        let registry = image.split('/').next().unwrap_or_default();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let authfile = dir.path().join("auth.json");
        std::fs::write(
            &authfile,
            serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
        )?;
        let out = self
            .podman()
            .arg(verb)
            .arg("--quiet")
            .arg(format!("--tls-verify={tls_verify}"))
            .arg("--authfile")
            .arg(&authfile)
            .arg(image)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "{verb} failed: {}",
            tail(&out.stderr, 5)
        );
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BuildSpec<'a> {
    /// With `instance`, names the build's cgroup (`cgroup_name`), so a build that
    /// runs too long can be stopped on the blade: killing Podman's client does not
    /// stop it. The instance makes the name unique on a blade that several shisa
    /// installations (or test stacks) share; a build id alone is only a counter.
    pub id: i64,
    pub instance: &'a str,
    /// The owner's build store (never the blade's storage).
    pub store: &'a Store,
    pub context: &'a Path,
    pub file: &'a Path,
    pub tags: Vec<String>,
    pub uid_base: u32,
    pub uid_count: u32,
    pub memory_bytes: u64,
    pub cpus: f64,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Built {
    pub ok: bool,
    /// The last lines of the build's output.
    pub log_tail: String,
}

fn podman(socket: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("podman");
    c.arg("--remote")
        .arg("--url")
        .arg(format!("unix://{}", socket.display()))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let t = String::from_utf8_lossy(bytes);
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Podman 4.3's build (buildah before 1.31) can SIGKILL a RUN step itself: the runtime
/// gets PR_SET_PDEATHSIG from a Go thread that the runtime then frees (podman#17918,
/// buildah#4790). The step fails with this text though nobody asked; such a build is run
/// once more. (A step killed for memory says the same, and fails again the same way.)
const SPURIOUS_KILL: &str = "while running runtime: signal: killed";

pub async fn build(s: &BuildSpec<'_>) -> anyhow::Result<Built> {
    let first = build_once(s).await?;
    if first.ok || !first.log_tail.contains(SPURIOUS_KILL) {
        return Ok(first);
    }
    tracing::warn!(
        build = s.id,
        "a RUN step was killed by the blade's Podman, not by shisa; building once more"
    );
    build_once(s).await
}

async fn build_once(s: &BuildSpec<'_>) -> anyhow::Result<Built> {
    let mut c = s.store.podman();
    c.arg("build")
        .arg("--force-rm")
        .arg("--layers")
        .arg("--pull=never")
        .arg(format!("--userns-uid-map=0:{}:{}", s.uid_base, s.uid_count))
        .arg(format!("--userns-gid-map=0:{}:{}", s.uid_base, s.uid_count))
        .arg(format!("--memory={}", s.memory_bytes))
        .arg("--cpu-period=100000")
        .arg(format!(
            "--cpu-quota={}",
            (s.cpus * 100_000.0).round().max(1000.0) as u64
        ))
        .arg(format!("--cgroup-parent={}", cgroup_name(s.instance, s.id)))
        .arg("--file")
        .arg(s.file);
    for t in &s.tags {
        c.arg("--tag").arg(t);
    }
    c.arg(s.context);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    // All output is drained (a builder blocked on a full pipe never ends) but only its end
    // is kept: `RUN yes` must not take shisa's memory.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Kept::default()));
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(tokio::spawn(keep_end(o, kept.clone())));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(tokio::spawn(keep_end(e, kept.clone())));
    }
    // The build's Podman keeps running past the limit: it must see its step die and remove
    // the working container itself (killing it first would leave that behind).
    let mut run = tokio::spawn(async move {
        let status = child.wait().await;
        for r in readers {
            let _ = r.await;
        }
        status
    });
    let out = match tokio::time::timeout(s.timeout, &mut run).await {
        Ok(out) => out,
        Err(_) => {
            // The RUN step is PID 1 of its namespace, so only SIGKILL ends it; then the
            // build fails and --force-rm removes its working container.
            let name = cgroup_name(s.instance, s.id);
            tokio::task::spawn_blocking(move || stop_cgroup(&name))
                .await
                .ok();
            if tokio::time::timeout(Duration::from_secs(30), &mut run)
                .await
                .is_err()
            {
                run.abort();
            }
            return Ok(Built {
                ok: false,
                log_tail: format!(
                    "the build ran longer than its limit of {} s and was stopped",
                    s.timeout.as_secs()
                ),
            });
        }
    };
    let status = out??;
    let k = kept.lock().unwrap_or_else(|e| e.into_inner());
    let end: Vec<u8> = k.end.iter().copied().collect();
    let mut log_tail = tail(&end, 25);
    if k.total > BUILD_LOG_BYTES as u64 {
        log_tail = format!(
            "{}\n{log_tail}",
            crate::messages::render(
                crate::messages::Lang::En,
                "build.log_cut",
                &[("size", crate::containers::fmt_size(k.total))],
            )
        );
    }
    Ok(Built {
        ok: status.success(),
        log_tail,
    })
}

/// The most of a build's output held in memory: its end.
pub const BUILD_LOG_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Kept {
    end: std::collections::VecDeque<u8>,
    total: u64,
}

/// Read `r` to its end, keeping only the last `BUILD_LOG_BYTES` (shared by stdout and stderr).
async fn keep_end(
    mut r: impl tokio::io::AsyncRead + Unpin,
    kept: std::sync::Arc<std::sync::Mutex<Kept>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                k.total += n as u64;
                k.end.extend(&buf[..n]);
                let over = k.end.len().saturating_sub(BUILD_LOG_BYTES);
                k.end.drain(..over);
            }
        }
    }
}

pub fn cgroup_name(instance: &str, id: i64) -> String {
    // No dashes: systemd reads them as nesting in slice names.
    let instance: String = instance
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("shisabuild{instance}x{id}.slice")
}

/// Directories named `name` in the cgroup hierarchies (v1 controllers or v2), deepest first.
fn cgroup_dirs(name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == name {
                found.push(e.path());
            } else if depth < 3 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn procs_under(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Kill every process of a build's cgroup, then remove the (empty) cgroups.
pub fn stop_cgroup(name: &str) {
    for _ in 0..50 {
        let pids: Vec<i32> = cgroup_dirs(name)
            .iter()
            .flat_map(|d| procs_under(d))
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            if p > 1 {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the blade's Podman a moment to fail the step and remove its working container.
    std::thread::sleep(Duration::from_secs(2));
    for d in cgroup_dirs(name) {
        let mut subs = Vec::new();
        let mut stack = vec![d.clone()];
        while let Some(x) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&x) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            subs.push(x);
        }
        for x in subs.iter().rev() {
            let _ = std::fs::remove_dir(x);
        }
    }
}

/// The tags a build of `git_ref` at `sha` writes: its primary tag, and whether it also
/// writes `latest`. Only the project's default branch writes `latest` (and its primary tag is
/// the short sha); any other ref is tagged `REF-SHORTSHA` (or `REF` when it was built by
/// name), so a teammate's branch never replaces the owner's `latest`.
pub fn tags_for(git_ref: &str, sha: &str, default_branch: Option<&str>) -> (String, bool) {
    let name = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref);
    let short: String = sha.chars().take(8).collect();
    if default_branch == Some(name) {
        return (short, true);
    }
    // The registry's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_start_matches(['.', '-']).to_string();
    let by_sha = sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit());
    let tag = match (clean.is_empty(), by_sha) {
        (true, _) => short,
        (false, true) => format!("{}-{short}", clean.chars().take(100).collect::<String>()),
        (false, false) => clean.chars().take(128).collect(),
    };
    (tag, false)
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn slugs() {
        assert_eq!(slug("alice/mymodel"), "alice-mymodel");
        assert_eq!(slug("Alice/My Model.v2"), "alice-my-model-v2");
        assert_eq!(slug("//"), "project");
        assert_eq!(slug("a__b"), "a-b");
    }

    #[test]
    fn base_images_of_a_containerfile() {
        let cf = "# comment\nARG X=1\nFROM localhost/busybox:latest AS base\nRUN true\nFROM base\nCOPY --from=base /a /b\nCOPY --from=0 /a /b\nCOPY --from=127.0.0.1:5000/bob/x:1 /c /d\nFROM \\\n  scratch\n";
        assert_eq!(
            super::base_images(cf).unwrap(),
            vec!["localhost/busybox:latest", "127.0.0.1:5000/bob/x:1"]
        );
        assert!(super::base_images("FROM $BASE\n").is_err());
        assert!(super::base_images("FROM --platform=linux/amd64 ${X}\n").is_err());
        assert!(super::base_images("FROM\n").is_err());
        assert_eq!(
            super::base_images("from --platform=linux/amd64 a/b AS c\n").unwrap(),
            vec!["a/b"]
        );
    }

    proptest::proptest! {
        #[test]
        fn base_images_never_panics(s in "\\PC{0,200}") {
            let _ = super::base_images(&s);
        }

        #[test]
        fn slugs_are_valid_repository_components(p in "\\PC{0,80}") {
            let s = slug(&p);
            proptest::prop_assert!(!s.is_empty() && s.len() <= 100);
            proptest::prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            proptest::prop_assert!(!s.starts_with('-') && !s.ends_with('-'));
        }
    }

    #[test]
    fn only_the_default_branch_writes_latest() {
        use super::tags_for;
        let sha = "a1a1a1a1b2b2b2b2c3c3c3c3d4d4d4d4e5e5e5e5";
        assert_eq!(
            tags_for("refs/heads/main", sha, Some("main")),
            ("a1a1a1a1".to_string(), true)
        );
        assert_eq!(
            tags_for("refs/heads/feature/x", sha, Some("main")),
            ("feature-x-a1a1a1a1".to_string(), false)
        );
        assert_eq!(
            tags_for("main", "main", Some("main")),
            ("main".to_string(), true)
        );
        assert_eq!(
            tags_for("v2.0", "v2.0", Some("main")),
            ("v2.0".to_string(), false)
        );
        assert_eq!(
            tags_for("refs/heads/main", sha, None),
            ("main-a1a1a1a1".to_string(), false),
            "no known default branch: no latest"
        );
        assert_eq!(tags_for("-/-", sha, Some("main")).0, "a1a1a1a1");
    }
}
