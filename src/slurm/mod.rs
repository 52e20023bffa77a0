//! Slurm behind a small trait: submit a batch script as its owner, read the
//! state of tracked jobs in one batched query, cancel. `Cli` drives the
//! command-line tools (`sbatch`, `squeue --json`, `scancel`, `scontrol`):
//! argument lists only, never a shell, a cleared environment (none of
//! shisa's secrets reach Slurm or a job), `--export=NONE`.

pub mod allocator;
pub mod script;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub partition: Option<String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub time_minutes: u64,
    /// (type, count)
    pub gpus: Option<(Option<String>, u32)>,
    pub output: PathBuf,
    pub workdir: PathBuf,
    /// Run on this node only (a GPU container's blade).
    pub nodelist: Option<String>,
    /// `--comment`: names the shisa instance and the work that submitted it
    /// (`shisa:INSTANCE:KIND:ID`), so a retry after a crash finds what it submitted.
    pub comment: String,
    pub script: String,
}

impl Submit {
    /// sbatch's arguments: every resource is here, none in the script.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            "--export=NONE".into(),
            format!("--uid={}", self.uid),
            format!("--gid={}", self.gid),
            format!("--job-name={}", self.name),
            "--nodes=1".into(),
            "--ntasks=1".into(),
            format!("--cpus-per-task={}", self.cpus.max(1)),
            // Always a memory request: with CR_Core_Memory, none means the whole node.
            format!("--mem={}M", self.memory_mb.max(1)),
            format!("--time={}", self.time_minutes.max(1)),
            format!("--output={}", self.output.display()),
            format!("--error={}", self.output.display()),
            format!("--chdir={}", self.workdir.display()),
        ];
        if !self.comment.is_empty() {
            a.push(format!("--comment={}", self.comment));
        }
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(n) = &self.nodelist {
            a.push(format!("--nodelist={n}"));
        }
        if let Some((kind, n)) = &self.gpus {
            a.push(match kind {
                Some(k) => format!("--gpus={k}:{n}"),
                None => format!("--gpus={n}"),
            });
        }
        a
    }
}

/// What Slurm reports of a job; the store keeps it as it is.
pub use crate::store::jobs::JobState;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The controller answered and said no: its words, for the user.
    #[error("{0}")]
    Refused(String),
    /// Slurm cannot be reached or answered nonsense: transient.
    #[error("Slurm is not answering: {0}")]
    Down(String),
}

#[async_trait]
pub trait Scheduler: Send + Sync {
    async fn submit(&self, s: &Submit) -> Result<u64, SlurmError>;
    /// States of these jobs; a job Slurm no longer knows is absent.
    async fn states(&self, ids: &[u64]) -> Result<HashMap<u64, JobState>, SlurmError>;
    async fn cancel(&self, id: u64) -> Result<(), SlurmError>;
    /// A node's GPUs: (configured, allocated).
    async fn node_gpus(&self, node: &str) -> Result<(u32, u32), SlurmError>;
    /// Whether the controller answers (`scontrol ping`).
    async fn ping(&self) -> Result<(), SlurmError>;
    /// The job submitted with this comment that Slurm still remembers, and its state
    /// (`PENDING`, `RUNNING`, `COMPLETED`, ...).
    async fn find(&self, comment: &str) -> Result<Option<(u64, String)>, SlurmError>;
}

/// `squeue -h -a -t all -o %i|%T|%k` output: the newest job with exactly this comment.
pub fn job_with_comment(out: &str, comment: &str) -> Option<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(3, '|');
            let (id, state, c) = (f.next()?, f.next()?, f.next()?);
            (c == comment).then(|| Some((id.parse().ok()?, state.to_string())))?
        })
        .max()
}

/// `IDX:0`, `IDX:0-1`, `IDX:0,2-3` inside a GRES detail string.
pub fn parse_idx(detail: &str) -> Vec<u32> {
    let Some(rest) = detail.split("IDX:").nth(1) else {
        return Vec::new();
    };
    let list: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '-')
        .collect();
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    if b >= a && b - a < 1024 {
                        out.extend(a..=b);
                    }
                }
            }
            None => out.extend(part.parse::<u32>().ok()),
        }
    }
    out
}

/// The GPU count of a `gpu[:type]:N[(…)]` GRES string (`scontrol show node`), summed.
pub fn gres_count(s: &str) -> u32 {
    s.split(',')
        .filter(|g| g.starts_with("gpu"))
        .filter_map(|g| g.split('(').next()?.rsplit(':').next()?.parse::<u32>().ok())
        .sum()
}

/// The command-line tools.
pub struct Cli {
    /// `SLURM_CONF` for the tools (default: theirs).
    pub conf: Option<PathBuf>,
}

impl Cli {
    fn cmd(&self, program: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(conf) = &self.conf {
            c.env("SLURM_CONF", conf);
        }
        c
    }

    async fn run(
        &self,
        mut c: tokio::process::Command,
        stdin: Option<&str>,
    ) -> Result<String, SlurmError> {
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().map_err(|e| SlurmError::Down(e.to_string()))?;
        if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
            i.write_all(text.as_bytes())
                .await
                .map_err(|e| SlurmError::Down(e.to_string()))?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| SlurmError::Down("no answer within 30 s".into()))?
                .map_err(|e| SlurmError::Down(e.to_string()))?;
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            // Connection trouble is transient; anything else is the controller's refusal.
            let down = [
                "Unable to contact slurm controller",
                "Socket timed out",
                "Connection refused",
                "Zero Bytes were transmitted",
            ];
            return Err(if down.iter().any(|d| err.contains(d)) || err.is_empty() {
                SlurmError::Down(err)
            } else {
                SlurmError::Refused(
                    err.trim_start_matches("sbatch: error: ")
                        .trim_start_matches("scancel: error: ")
                        .to_string(),
                )
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// `squeue --json` (Slurm 22.05): `jobs[]` with `job_id`, `job_state`, `state_reason`,
/// `exit_code` (wait status), `start_time`, `end_time`, `nodes`.
pub fn parse_squeue(json: &str) -> Result<HashMap<u64, JobState>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut out = HashMap::new();
    for j in v["jobs"].as_array().ok_or("no `jobs` array")? {
        let Some(id) = j["job_id"].as_u64() else {
            continue;
        };
        let code = j["exit_code"].as_i64().map(|w| {
            // A wait status: exit code in the high byte, or the signal.
            if w & 0x7f != 0 {
                128 + (w & 0x7f) as i32
            } else {
                ((w >> 8) & 0xff) as i32
            }
        });
        out.insert(
            id,
            JobState {
                state: j["job_state"].as_str().unwrap_or_default().to_string(),
                reason: j["state_reason"].as_str().unwrap_or_default().to_string(),
                exit_code: code,
                start_time: j["start_time"].as_i64().unwrap_or(0),
                end_time: j["end_time"].as_i64().unwrap_or(0),
                node: j["nodes"].as_str().unwrap_or_default().to_string(),
                gpu_idx: j["gres_detail"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|d| d.as_str())
                            .flat_map(parse_idx)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
        );
    }
    Ok(out)
}

#[async_trait]
impl Scheduler for Cli {
    async fn submit(&self, s: &Submit) -> Result<u64, SlurmError> {
        let mut c = self.cmd("sbatch");
        c.args(s.args());
        let out = self.run(c, Some(&s.script)).await?;
        // --parsable: "ID" or "ID;cluster".
        out.trim()
            .split(';')
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| SlurmError::Down(format!("sbatch said `{}`", out.trim())))
    }

    async fn states(&self, ids: &[u64]) -> Result<HashMap<u64, JobState>, SlurmError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let mut c = self.cmd("squeue");
        c.arg("--json").arg(format!("--jobs={}", list.join(",")));
        match self.run(c, None).await {
            Ok(out) => parse_squeue(&out).map_err(SlurmError::Down),
            // squeue refuses a list where every id is unknown: that means all finished and gone.
            Err(SlurmError::Refused(e)) if e.contains("Invalid job id") => Ok(HashMap::new()),
            Err(e) => Err(e),
        }
    }

    async fn cancel(&self, id: u64) -> Result<(), SlurmError> {
        let mut c = self.cmd("scancel");
        c.arg(id.to_string());
        self.run(c, None).await.map(|_| ())
    }

    async fn find(&self, comment: &str) -> Result<Option<(u64, String)>, SlurmError> {
        let mut c = self.cmd("squeue");
        c.args(["-h", "-a", "-t", "all", "-o", "%i|%T|%k"]);
        let out = self.run(c, None).await?;
        Ok(job_with_comment(&out, comment))
    }

    async fn ping(&self) -> Result<(), SlurmError> {
        let mut c = self.cmd("scontrol");
        c.arg("ping");
        match self.run(c, None).await {
            Ok(out) if out.contains("is UP") => Ok(()),
            Ok(out) => Err(SlurmError::Down(out.trim().to_string())),
            // scontrol ping exits non-zero when the controller is down: that is "down", not a refusal.
            Err(SlurmError::Refused(e)) | Err(SlurmError::Down(e)) => Err(SlurmError::Down(e)),
        }
    }

    async fn node_gpus(&self, node: &str) -> Result<(u32, u32), SlurmError> {
        let mut c = self.cmd("scontrol");
        c.args(["show", "node", "-d", "-o", node]);
        let out = self.run(c, None).await?;
        let field = |k: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        Ok((gres_count(&field("Gres=")), gres_count(&field("GresUsed="))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_json() {
        let j = r#"{"jobs":[{"job_id":7,"job_state":"FAILED","state_reason":"NonZeroExitCode","exit_code":1792,"start_time":10,"end_time":20,"nodes":"vm"},
                   {"job_id":8,"job_state":"PENDING","state_reason":"Resources","exit_code":0,"start_time":99,"end_time":0,"nodes":""},
                   {"job_id":9,"job_state":"CANCELLED","exit_code":15}]}"#;
        let m = parse_squeue(j).unwrap();
        assert_eq!(m[&7].exit_code, Some(7));
        assert!(m[&7].finished() && !m[&8].finished());
        assert_eq!(m[&8].reason, "Resources");
        assert_eq!(m[&9].exit_code, Some(143));
        assert!(parse_squeue("{}").is_err() && parse_squeue("nope").is_err());
    }

    #[test]
    fn gres() {
        assert_eq!(parse_idx("gpu:tesla:1(IDX:0)"), vec![0]);
        assert_eq!(parse_idx("gpu:tesla:3(IDX:0,2-3)"), vec![0, 2, 3]);
        assert_eq!(parse_idx("gpu:tesla:0(IDX:N/A)"), Vec::<u32>::new());
        assert_eq!(gres_count("gpu:tesla:2(S:0)"), 2);
        assert_eq!(gres_count("gpu:tesla:1(IDX:0)"), 1);
        assert_eq!(gres_count("gpu:a:1,gpu:b:2"), 3);
        assert_eq!(gres_count("(null)"), 0);
    }

    proptest::proptest! {
        #[test]
        fn gres_parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_idx(&s);
            let _ = gres_count(&s);
        }
    }

    #[test]
    fn resources_go_on_the_command_line() {
        let s = Submit {
            uid: 20001,
            gid: 20001,
            name: "train".into(),
            partition: None,
            cpus: 2,
            memory_mb: 512,
            time_minutes: 90,
            gpus: Some((Some("tesla".into()), 1)),
            output: "/h/alice/shisa-jobs/3/output.log".into(),
            workdir: "/h/alice".into(),
            nodelist: None,
            comment: "shisa:abc:job:7".into(),
            script: String::new(),
        };
        assert_eq!(
            job_with_comment(
                "12|RUNNING|other\n13|PENDING|shisa:abc:job:7\n",
                "shisa:abc:job:7"
            ),
            Some((13, "PENDING".into()))
        );
        assert_eq!(
            job_with_comment("13|PENDING|shisa:abc:job:70\n", "shisa:abc:job:7"),
            None
        );
        let a = s.args();
        for want in [
            "--export=NONE",
            "--uid=20001",
            "--mem=512M",
            "--time=90",
            "--gpus=tesla:1",
            "--cpus-per-task=2",
        ] {
            assert!(a.contains(&want.to_string()), "{want} in {a:?}");
        }
    }
}
