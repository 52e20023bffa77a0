//! Image → SIF on a blade: the image's merged root filesystem (whiteouts and
//! opaque directories applied by the overlay), mounted by Podman without
//! copying anything, squashed natively (`super::squash`, gzip by default for
//! Apptainer) in an unprivileged child together with the runtime skeleton
//! Apptainer expects (`/.singularity.d`), then wrapped into a SIF natively.
//! `mksquashfs` is the fallback writer.
//!
//! Files are content addressed: `IMAGE-ID-vVERSION-COMP.sif`, written to a
//! temporary name and renamed, so a re-pushed tag never changes a file a job
//! reads, and a second request for the same image is immediate. Concurrent
//! requests for one image share one conversion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::squash::Skeleton;
use super::{DataType, Object, StreamObject, WriteOptions};
use crate::podman::Podman;

/// Bump when the output of the same input changes.
pub const CONVERTER_VERSION: u32 = 2;

/// Which program writes the squashfs.
#[derive(Debug, Clone, PartialEq)]
pub enum Writer {
    /// `HELPER sif squash …`: the shisa binary's own backhand writer.
    Native {
        helper: PathBuf,
    },
    Mksquashfs,
}

impl Writer {
    /// The writer `[sif]` asks for.
    pub fn configured(cfg: &crate::config::SifConfig) -> Writer {
        if cfg.writer == "mksquashfs" {
            return Writer::Mksquashfs;
        }
        match cfg.helper.clone().or_else(|| std::env::current_exe().ok()) {
            Some(helper) => Writer::Native { helper },
            None => Writer::Mksquashfs,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `gzip` or `zstd`.
    pub compression: String,
    pub writer: Writer,
    /// Bytes of squashfs written so far, for progress reports.
    pub progress: Option<tokio::sync::watch::Sender<u64>>,
}

impl Options {
    pub fn new(compression: &str, writer: Writer) -> Options {
        Options {
            compression: compression.into(),
            writer,
            progress: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub path: PathBuf,
    pub cached: bool,
    /// Which writer made the squashfs (`native` or `mksquashfs`); empty when cached.
    pub writer: &'static str,
}

fn locks() -> &'static Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    static L: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Single-quote for POSIX sh: the image's Entrypoint and Cmd are user data.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/.singularity.d` tree for an image with this OCI config.
pub fn skeleton(config: &serde_json::Value) -> Skeleton {
    let words = |k: &str| -> Vec<String> {
        config[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let entry = words("Entrypoint");
    let cmd = words("Cmd");
    let mut env = String::from("#!/bin/sh\n# Environment from the image (OCI config Env).\n");
    for e in words("Env") {
        if let Some((k, v)) = e.split_once('=') {
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                if k == "PATH" {
                    env.push_str(&format!("export PATH={}\n", sh_quote(v)));
                } else {
                    env.push_str(&format!(
                        "export {k}=\"${{{k}:-\"{}\"}}\"\n",
                        v.replace(['"', '\\', '$', '`'], "")
                    ));
                }
            }
        }
    }
    let all: Vec<String> = entry
        .iter()
        .chain(cmd.iter())
        .map(|w| sh_quote(w))
        .collect();
    let workdir = config["WorkingDir"]
        .as_str()
        .filter(|w| w.starts_with('/'))
        .map(|w| format!("cd {} 2>/dev/null || true\n", sh_quote(w)))
        .unwrap_or_default();
    let ep: Vec<String> = entry.iter().map(|w| sh_quote(w)).collect();
    let prologue =
        "#!/bin/sh\nfor f in /.singularity.d/env/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n";
    let runscript = if all.is_empty() {
        format!("{prologue}{workdir}exec /bin/sh \"$@\"\n")
    } else {
        // Arguments replace CMD, as `docker run IMAGE ARGS` does; ENTRYPOINT stays.
        let with_args = if ep.is_empty() {
            "exec \"$@\"".to_string()
        } else {
            format!("exec {} \"$@\"", ep.join(" "))
        };
        format!(
            "{prologue}{workdir}if [ $# -gt 0 ]; then {with_args}; fi\nexec {}\n",
            all.join(" ")
        )
    };
    let action = |target: &str| {
        format!("#!/bin/sh\nfor f in /.singularity.d/env/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n{target}\n")
    };
    let labels = serde_json::to_string_pretty(&config["Labels"]).unwrap_or_else(|_| "{}".into());
    let files: Vec<(&str, u32, String)> = vec![
        ("/.singularity.d/runscript", 0o755, runscript),
        ("/.singularity.d/startscript", 0o755, "#!/bin/sh\n".into()),
        ("/.singularity.d/env/10-docker2singularity.sh", 0o755, env),
        (
            "/.singularity.d/env/90-environment.sh",
            0o755,
            "#!/bin/sh\n# Custom environment shell code goes here.\n".into(),
        ),
        ("/.singularity.d/labels.json", 0o644, labels),
        ("/.singularity.d/actions/exec", 0o755, action("exec \"$@\"")),
        (
            "/.singularity.d/actions/run",
            0o755,
            action("exec /.singularity.d/runscript \"$@\""),
        ),
        (
            "/.singularity.d/actions/shell",
            0o755,
            action("exec /bin/sh \"$@\""),
        ),
        (
            "/.singularity.d/actions/start",
            0o755,
            action("exec /.singularity.d/startscript \"$@\""),
        ),
        ("/.singularity.d/actions/test", 0o755, action("exit 0")),
    ];
    Skeleton {
        dirs: [
            "/.singularity.d",
            "/.singularity.d/actions",
            "/.singularity.d/env",
            "/.singularity.d/libs",
        ]
        .map(String::from)
        .to_vec(),
        files: files
            .into_iter()
            .map(|(p, m, c)| (p.to_string(), m, c))
            .collect(),
        links: [
            ("/singularity", ".singularity.d/runscript"),
            ("/.run", ".singularity.d/actions/run"),
            ("/.exec", ".singularity.d/actions/exec"),
            ("/.shell", ".singularity.d/actions/shell"),
            ("/.test", ".singularity.d/actions/test"),
            ("/environment", ".singularity.d/env/90-environment.sh"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .to_vec(),
    }
}

/// The image's files are untrusted data. As root, the writer runs as
/// `nobody` with only CAP_DAC_READ_SEARCH (to read every file, keeping owners
/// and modes as they are), no other capability, and resource limits.
fn confined(
    program: &Path,
    args: &[String],
    work: &Path,
) -> anyhow::Result<tokio::process::Command> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c;
    if root {
        // The scratch directory becomes the child's, so it can write the squashfs and read the skeleton.
        std::os::unix::fs::chown(work, Some(65534), Some(65534))?;
        for e in std::fs::read_dir(work)? {
            std::os::unix::fs::chown(e?.path(), Some(65534), Some(65534))?;
        }
        c = tokio::process::Command::new("prlimit");
        c.args([
            "--nofile=4096:4096",
            "--nproc=512:512",
            "--as=8589934592:8589934592",
            "--core=0:0",
            "--",
        ])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+dac_read_search",
            "--ambient-caps=+dac_read_search",
            "--bounding-set=-all,+dac_read_search",
            "--no-new-privs",
            "--",
        ])
        .arg(program);
    } else {
        c = tokio::process::Command::new(program);
    }
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    Ok(c)
}

/// The fallback writer's command line: the same tree as the native writer's, device nodes
/// and sockets left out and setuid/setgid bits dropped (mksquashfs actions, squashfs-tools
/// 4.3 and later).
pub fn mksquashfs_args(
    root: &str,
    sqfs: &Path,
    comp: &str,
    skel: &Skeleton,
    work: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = vec![
        root.into(),
        sqfs.display().to_string(),
        "-noappend".into(),
        "-quiet".into(),
        "-no-progress".into(),
        "-comp".into(),
        comp.into(),
        "-action".into(),
        "exclude@type(c) || type(b) || type(s)".into(),
        "-action".into(),
        "chmod(ug-s)@perm(/u+s) || perm(/g+s)".into(),
    ];
    let procs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    args.extend(["-processors".into(), procs.to_string()]);
    for d in &skel.dirs {
        args.extend(["-p".into(), format!("{d} d 755 0 0")]);
    }
    for (i, (path, mode, content)) in skel.files.iter().enumerate() {
        let f = work.join(format!("skel-{i}"));
        std::fs::write(&f, content)?;
        // The command is ours (cat of our own temp file), never user text.
        args.extend([
            "-p".into(),
            format!("{path} f {mode:o} 0 0 cat {}", f.display()),
        ]);
    }
    for (link, target) in &skel.links {
        args.extend(["-p".into(), format!("{link} s 777 0 0 {target}")]);
    }
    Ok(args)
}

/// Run one writer to completion, reporting the growing file's size.
async fn run_writer(
    mut cmd: tokio::process::Command,
    sqfs: &Path,
    progress: Option<&tokio::sync::watch::Sender<u64>>,
) -> anyhow::Result<()> {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let out = child.wait_with_output();
    tokio::pin!(out);
    let out = loop {
        tokio::select! {
            o = &mut out => break o?,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if let (Some(p), Ok(m)) = (progress, std::fs::metadata(sqfs)) {
                    let _ = p.send(m.len());
                }
            }
        }
    };
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .chars()
            .take(500)
            .collect::<String>()
    );
    Ok(())
}

/// Write the squashfs of `root` with the configured writer, falling back to
/// `mksquashfs`; says which one wrote it.
async fn squash(
    root: &str,
    sqfs: &Path,
    skel: &Skeleton,
    work: &Path,
    opts: &Options,
) -> anyhow::Result<&'static str> {
    if let Writer::Native { helper } = &opts.writer {
        let spec = work.join("skeleton.json");
        std::fs::write(&spec, serde_json::to_vec(skel)?)?;
        let args: Vec<String> = vec![
            "sif".into(),
            "squash".into(),
            root.into(),
            sqfs.display().to_string(),
            "--compression".into(),
            opts.compression.clone(),
            "--skeleton".into(),
            spec.display().to_string(),
        ];
        match run_writer(confined(helper, &args, work)?, sqfs, opts.progress.as_ref()).await {
            Ok(()) => return Ok("native"),
            Err(e) => {
                tracing::warn!(error = %e, helper = %helper.display(), "native squashfs writer failed; falling back to mksquashfs");
                let _ = std::fs::remove_file(sqfs);
            }
        }
    }
    let args = mksquashfs_args(root, sqfs, &opts.compression, skel, work)?;
    let cmd = confined(Path::new("mksquashfs"), &args, work)?;
    run_writer(cmd, sqfs, opts.progress.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("mksquashfs failed: {e}"))?;
    Ok("mksquashfs")
}

fn comp_ok(c: &str) -> bool {
    matches!(c, "gzip" | "zstd")
}

/// Convert `image` (on the blade `client` talks to, which must be this machine) into `store`.
pub async fn convert(
    client: &dyn Podman,
    image: &str,
    store: &Path,
    tmp: &Path,
    opts: &Options,
) -> anyhow::Result<Converted> {
    let comp = opts.compression.as_str();
    anyhow::ensure!(comp_ok(comp), "compression must be gzip or zstd");
    let info = client.image_inspect(image).await?;
    let id = info.id.trim_start_matches("sha256:").to_string();
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "the image has no usable id"
    );
    let name = format!("{id}-v{CONVERTER_VERSION}-{comp}.sif");
    let target = store.join(&name);
    let lock = locks()
        .lock()
        .unwrap()
        .entry(name.clone())
        .or_default()
        .clone();
    let _guard = lock.lock().await;
    if target.exists() {
        return Ok(Converted {
            path: target,
            cached: true,
            writer: "",
        });
    }
    std::fs::create_dir_all(store)?;
    let work = tempfile::Builder::new().prefix("shisa-sif-").tempdir_in({
        std::fs::create_dir_all(tmp)?;
        tmp
    })?;
    // A created (never started) container gives Podman's merged view of the layers, whiteouts applied.
    let spec = serde_json::json!({"image": image, "name": format!("shisa-sif-{}", uuid::Uuid::new_v4().simple()), "command": ["/nonexistent"], "labels": {"shisa.sif": "true"}});
    let cid = client.create(&spec).await?;
    let result = async {
        let root = client.mount(&cid).await?;
        let sqfs = work.path().join("fs.sqfs");
        let writer = squash(&root, &sqfs, &skeleton(&info.config), work.path(), opts).await?;
        let partial = store.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
        let mut f = std::fs::File::create(&partial)?;
        let deffile = format!("bootstrap: docker\nfrom: {image}\n");
        let oci = serde_json::to_vec(&info.config)?;
        let objects = vec![
            StreamObject {
                object: Object::new(DataType::Deffile, "", vec![]),
                reader: Box::new(std::io::Cursor::new(deffile.into_bytes())),
            },
            StreamObject {
                object: Object::new(DataType::GenericJson, "oci-config.json", vec![]),
                reader: Box::new(std::io::Cursor::new(oci)),
            },
            StreamObject {
                object: Object::squashfs(vec![], &info.architecture),
                reader: Box::new(std::fs::File::open(&sqfs)?),
            },
        ];
        super::write(&mut f, objects, &WriteOptions::default())?;
        f.sync_all()?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&partial, &target)?;
        Ok::<_, anyhow::Error>(writer)
    }
    .await;
    let _ = client.unmount(&cid).await;
    let _ = client.remove(&cid, true).await;
    Ok(Converted {
        path: target,
        cached: false,
        writer: result?,
    })
}
