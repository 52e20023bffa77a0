//! `/job submit`: the request resolved from the command and the template, the job
//! script, and the queued submission (SIF first, then `sbatch` as the user).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::app::App;
use crate::commands::typed::SubmitArgs;
use crate::identity::Account;
use crate::images;
use crate::messages::{render, Lang, UserError};
use crate::store::jobs::JobRow;
use crate::store::queue::QueuedTask;

use super::TaskError;

/// What a submission asks for, after templates, defaults and limits.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Request {
    pub image: String,
    pub typed: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub minutes: u64,
    pub gpus: Option<(Option<String>, u32)>,
    pub partition: Option<String>,
    pub env: Vec<(String, String)>,
    /// Relative to the home.
    pub chdir: String,
    pub command: Vec<String>,
}

impl Request {
    /// What sbatch gets for this request, run as `account`, output in `job_dir`.
    pub fn submit(
        &self,
        account: &Account,
        job_dir: &Path,
        script: String,
        comment: String,
    ) -> crate::slurm::Submit {
        crate::slurm::Submit {
            uid: account.uid_number,
            gid: account.gid_number,
            name: self.name.clone(),
            partition: self.partition.clone(),
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            time_minutes: self.minutes,
            gpus: self.gpus.clone(),
            output: job_dir.join("output.log"),
            workdir: account.home.join(&self.chdir),
            nodelist: None,
            comment,
            script,
        }
    }
}

/// A path the user gave, relative to their home: no `..`, not absolute.
pub fn home_relative(p: &str) -> Result<PathBuf, UserError> {
    let bad = || UserError::new("job.bad_path").arg("path", p);
    if p.starts_with('/') || p.contains('\0') {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            std::path::Component::Normal(x) => out.push(x),
            std::path::Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// Build the request from the invocation: template defaults and bounds (a request above
/// the template is lowered, with a note), then the role's limits (above them: refused).
pub fn request(
    app: &App,
    caller: &Account,
    inv: &SubmitArgs,
) -> Result<(Request, Vec<String>, images::ImageRef), UserError> {
    let sl = app.cfg.slurm.as_ref().ok_or_else(|| {
        UserError::new("job.no_slurm").arg("contact", &app.cfg.mattermost.contact)
    })?;
    let mut notes = Vec::new();
    let template = match inv.template.as_deref() {
        Some(t) => Some(app.cfg.templates.get(t).ok_or_else(|| {
            UserError::new("container.template_unknown")
                .arg("template", t)
                .arg(
                    "templates",
                    app.cfg
                        .templates
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                )
        })?),
        None => None,
    };
    let raw_image = inv
        .image
        .clone()
        .or_else(|| template.map(|t| t.image.clone()))
        .ok_or_else(|| UserError::new("job.no_image"))?;
    let registry_host = app.registry.as_ref().map(|r| r.cfg.host.as_str());
    let image = images::resolve_with(
        &raw_image,
        &caller.uid,
        &app.cfg.images.allow,
        registry_host,
    )
    .map_err(|e| e.arg("contact", &app.cfg.mattermost.contact))?;
    let limits = app.cfg.limits_for(caller.role);
    // CPUs.
    let mut cpus = match inv.resources.cpus_milli {
        Some(m) => m.div_ceil(1000),
        None => template
            .and_then(|t| t.cpus)
            .map(|c| c.ceil() as u32)
            .unwrap_or(sl.default_cpus),
    };
    if let (Some(t), Some(_)) = (template.and_then(|t| t.cpus), inv.resources.cpus_milli) {
        if cpus as f64 > t.ceil() {
            notes.push(format!(
                "CPUs lowered from {cpus} to the template's {}",
                t.ceil()
            ));
            cpus = t.ceil() as u32;
        }
    }
    if cpus as f64 > limits.max_cpus {
        return Err(UserError::new("job.over_limit")
            .arg("what", "CPUs")
            .arg("asked", cpus.to_string())
            .arg("limit", limits.max_cpus.to_string()));
    }
    // Memory.
    let default_mem = template
        .and_then(|t| t.memory.as_ref())
        .map(|m| m.bytes)
        .unwrap_or(sl.default_memory.bytes);
    let mut memory = inv.resources.memory.unwrap_or(default_mem);
    if let (Some(t), Some(_)) = (
        template.and_then(|t| t.memory.as_ref()),
        inv.resources.memory,
    ) {
        let cap = t.bytes;
        if memory > cap {
            notes.push(format!("memory lowered to the template's {t}"));
            memory = cap;
        }
    }
    if memory > limits.max_memory.bytes {
        return Err(UserError::new("job.over_limit")
            .arg("what", "memory")
            .arg("asked", crate::containers::fmt_size(memory))
            .arg("limit", limits.max_memory.to_string()));
    }
    // Time.
    let tmpl_time = template.and_then(|t| t.time.as_ref()).map(|t| t.secs);
    let mut seconds = inv.time.or(tmpl_time).unwrap_or(sl.default_time.secs);
    if let (Some(t), Some(_)) = (tmpl_time, inv.time) {
        if seconds > t {
            notes.push(format!(
                "time limit lowered to the template's {} minutes",
                t.div_ceil(60)
            ));
            seconds = t;
        }
    }
    if seconds > limits.max_job_time.secs {
        return Err(UserError::new("job.over_limit")
            .arg("what", "of time")
            .arg("asked", short_duration(seconds))
            .arg("limit", limits.max_job_time.to_string()));
    }
    // The partition: the default, or one the caller's role may use. Slurm would check as
    // root (shisa submits with --uid), so shisa checks first.
    if let Some(p) = inv.partition.as_deref() {
        let allowed = sl.partition.as_deref() == Some(p)
            || limits.job_partitions.iter().any(|x| x == p || x == "*");
        if !allowed {
            let mut yours: Vec<String> = sl.partition.iter().cloned().collect();
            yours.extend(limits.job_partitions.iter().cloned());
            return Err(UserError::new("job.partition").arg("partition", p).arg(
                "partitions",
                if yours.is_empty() {
                    "(the default only: leave out --partition)".to_string()
                } else {
                    yours.join(", ")
                },
            ));
        }
    }
    // GPUs.
    let mut gpus = match &inv.resources.gpus {
        Some(g) => Some((g.kind.clone(), g.count)),
        None => template.filter(|t| t.gpus > 0).map(|t| (None, t.gpus)),
    };
    if let (Some(t), Some((k, n))) = (template, gpus.clone()) {
        if inv.resources.gpus.is_some() && n > t.gpus.max(1) && t.gpus > 0 {
            notes.push(format!(
                "GPUs lowered from {n} to the template's {}",
                t.gpus
            ));
            gpus = Some((k, t.gpus));
        }
    }
    if let Some((kind, n)) = &gpus {
        if *n > limits.max_gpus {
            return Err(UserError::new("job.over_limit")
                .arg("what", "GPUs")
                .arg("asked", n.to_string())
                .arg("limit", limits.max_gpus.to_string()));
        }
        if let Some(k) = kind {
            if !sl.gpu_types.is_empty() && !sl.gpu_types.contains(k) {
                return Err(UserError::new("job.gpu_type")
                    .arg("type", k)
                    .arg("types", sl.gpu_types.join(", ")));
            }
        }
    }
    let env = inv.env.clone();
    let chdir = match inv.chdir.as_deref() {
        Some(d) => home_relative(d)?.to_string_lossy().to_string(),
        None => String::new(),
    };
    let command = match (inv.script.as_deref(), &inv.command) {
        (Some(p), _) => {
            let rel = home_relative(p)?;
            vec![
                "/bin/sh".to_string(),
                caller.home.join(rel).to_string_lossy().to_string(),
            ]
        }
        (None, Some(c)) if !c.is_empty() => c.clone(),
        _ => return Err(UserError::new("job.no_command")),
    };
    for w in command.iter().chain(env.iter().map(|e| &e.1)) {
        crate::slurm::script::check_text(w)
            .map_err(|e| UserError::new("job.bad_text").arg("reason", e))?;
    }
    let name = inv.name.clone().unwrap_or_else(|| {
        command
            .first()
            .map(|c| c.rsplit('/').next().unwrap_or(c).to_string())
            .unwrap_or_else(|| "job".into())
    });
    Ok((
        Request {
            image: image.reference.clone(),
            typed: raw_image,
            name: name.chars().filter(|c| !c.is_control()).take(60).collect(),
            cpus: cpus.max(1),
            memory_mb: memory.div_ceil(1024 * 1024).max(1),
            minutes: seconds.div_ceil(60).max(1),
            gpus,
            partition: inv.partition.clone().or(sl.partition.clone()),
            env,
            chdir,
            command,
        },
        notes,
        image,
    ))
}

/// `259200` → `3d`, `5400` → `90m`: a time the way users write it.
fn short_duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s => format!("{}m", s.div_ceil(60)),
    }
}

pub fn launcher(app: &App, r: &Request) -> Vec<String> {
    let sl = app.cfg.slurm.as_ref().expect("slurm is configured");
    let mut l = sl.launcher.clone();
    if r.gpus.is_some() && !sl.gpu_flag.is_empty() {
        l.push(sl.gpu_flag.clone());
    }
    l
}

pub fn job_script(
    app: &App,
    r: &Request,
    home: &Path,
    job_dir: &Path,
    sif: &Path,
) -> Result<String, String> {
    crate::slurm::script::render(&crate::slurm::script::Script {
        job_dir,
        workdir: &home.join(&r.chdir),
        env: &r.env,
        launcher: &launcher(app, r),
        sif,
        command: &r.command,
    })
}

/// `H:MM:SS` a job has run (until now if it still runs); empty if it never started.
pub(crate) fn elapsed(j: &JobRow) -> String {
    if j.start_time <= 0 {
        return String::new();
    }
    let end = if j.end_time > 0 {
        j.end_time
    } else {
        crate::store::now()
    };
    let s = (end - j.start_time).max(0);
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Run a program as the account (never reading the user's files as root: no symlink
/// in their home can make shisa read something else).
pub async fn as_user(
    a: &Account,
    program: &str,
    args: &[&str],
) -> Result<std::process::Output, String> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = tokio::process::Command::new("setpriv");
        c.arg(format!("--reuid={}", a.uid_number))
            .arg(format!("--regid={}", a.gid_number))
            .arg("--clear-groups")
            .arg("--no-new-privs")
            .arg("--")
            .arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    };
    c.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .kill_on_drop(true);
    c.output().await.map_err(|e| e.to_string())
}

/// The most of a job's output read: its last bytes (one line can be any length, so
/// `tail -n` alone does not bound it), then the last lines of those.
pub const JOB_LOG_BYTES: usize = 64 * 1024;

pub(crate) async fn read_as(a: &Account, file: &Path, lines: u32) -> Result<String, String> {
    let f = file.to_string_lossy().to_string();
    let n = lines.clamp(1, 2000) as usize;
    // One byte more than kept: whether there was more is then known.
    let cap = (JOB_LOG_BYTES + 1).to_string();
    let out = as_user(a, "tail", &["-c", &cap, "--", &f]).await?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let cut = out.stdout.len() > JOB_LOG_BYTES;
    let bytes = &out.stdout[out.stdout.len().saturating_sub(JOB_LOG_BYTES)..];
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    let mut shown = all[all.len().saturating_sub(n)..].join("\n");
    if cut {
        shown = format!(
            "{}\n{shown}",
            crate::messages::render(crate::messages::Lang::En, "job.log_cut", &[])
        );
    }
    Ok(crate::mattermost::clip_post(shown))
}

/// The queued submission: SIF, job directory, script, sbatch, record.
pub async fn submit_job(
    app: &Arc<App>,
    job: &QueuedTask,
    req: Request,
    notes: Vec<String>,
) -> Result<String, TaskError> {
    let sched = app.scheduler.clone().ok_or(TaskError::Gone)?;
    let sl = app.cfg.slurm.clone().ok_or(TaskError::Gone)?;
    let account = app
        .directory
        .lookup(&job.owner)
        .await
        .map_err(|e| TaskError::Retry(e.into()))?
        .ok_or(TaskError::Gone)?;
    let sif = super::sif::ensure(app, job, &req.image, &req.typed).await?;
    // The job directory, made by the owner in their own home; named by the request,
    // so a retry after a crash uses the one its earlier attempt made.
    let base = account.home.join(&sl.jobs_dir);
    let tag: String = job
        .request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let retry = job.attempts > 1;
    let earlier = retry
        .then(|| std::fs::read_dir(&base).ok())
        .flatten()
        .and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|n| n.ends_with(&format!("-{tag}")))
        });
    let dir = base.join(earlier.unwrap_or_else(|| format!("{}-{tag}", chrono_like_stamp())));
    let d = dir.to_string_lossy().to_string();
    let out = as_user(&account, "mkdir", &["-p", "-m", "700", "--", &d])
        .await
        .map_err(|e| TaskError::Retry(anyhow::anyhow!(e)))?;
    if !out.status.success() {
        return Err(TaskError::User(
            UserError::new("job.no_dir").arg("dir", &d).arg(
                "reason",
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ),
        ));
    }
    let script = job_script(app, &req, &account.home, &dir, &sif.cluster_content)
        .map_err(|e| TaskError::User(UserError::new("job.bad_text").arg("reason", e)))?;
    let comment = format!("shisa:{}:job:{}", app.instance, job.id);
    let submit = req.submit(&account, &dir, script, comment);
    // Pinned before submission, so eviction cannot race a job that is about to start.
    let holder = format!("submit:{}", job.id);
    app.store
        .sif_pin(&sif.file, &holder)
        .await
        .map_err(TaskError::Retry)?;
    // An earlier attempt may have submitted it and been cut off before recording it.
    let found = if retry {
        sched.find(&submit.comment).await
    } else {
        Ok(None) // a first attempt has submitted nothing yet: no squeue on the common path
    };
    let result = match found {
        Ok(Some((id, _))) => {
            tracing::info!(slurm = id, "adopting the job an earlier attempt submitted");
            Ok(id)
        }
        Ok(None) => sched.submit(&submit).await,
        Err(e) => Err(e),
    };
    let id = match result {
        Ok(id) => id,
        Err(crate::slurm::SlurmError::Refused(e)) => {
            let _ = app.store.sif_unpin(&holder).await;
            return Err(TaskError::User(
                UserError::new("job.slurm_refused").arg("reason", e),
            ));
        }
        Err(e) => {
            let _ = app.store.sif_unpin(&holder).await;
            return Err(TaskError::Retry(e.into()));
        }
    };
    let gpus = req.gpus.as_ref().map(|(k, n)| match k {
        Some(k) => format!("{k}:{n}"),
        None => n.to_string(),
    });
    app.store
        .insert_job(JobRow {
            slurm_id: id,
            owner: job.owner.clone(),
            name: req.name.clone(),
            image: req.typed.clone(),
            sif: sif.file.clone(),
            dir: d.clone(),
            gpus: gpus.clone().unwrap_or_default(),
            state: "PENDING".into(),
            reason: String::new(),
            exit_code: None,
            submitted_at: 0,
            start_time: 0,
            end_time: 0,
            node: String::new(),
            done: false,
        })
        .await
        .map_err(TaskError::Retry)?;
    let _ = app.store.sif_unpin(&holder).await;
    Ok(render(
        Lang::En,
        "job.submitted",
        &[
            ("id", id.to_string()),
            ("name", req.name),
            ("image", req.typed),
            (
                "resources",
                format!(
                    "{} CPU, {} MB, {} min{}",
                    req.cpus,
                    req.memory_mb,
                    req.minutes,
                    gpus.map(|g| format!(", GPUs {g}")).unwrap_or_default()
                ),
            ),
            ("dir", d),
            (
                "notes",
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("\nNote: {}.", notes.join("; "))
                },
            ),
        ],
    ))
}

/// `20261122-0304`, for sortable job directory names.
pub fn chrono_like_stamp() -> String {
    let t = crate::store::now();
    let r = crate::registry::rfc3339(t);
    r.chars().filter(|c| c.is_ascii_digit()).take(12).collect()
}
