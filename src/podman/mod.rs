//! A small typed client for a blade's libpod REST API over its Unix socket.
//! Not the Docker-compatible API: that one drops CDI GPU devices on Podman 4.3
//! (shared/docs/crates.md). Paths carry the `/v4.0.0/libpod` prefix libpod requires.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

const API: &str = "http://d/v4.0.0/libpod";

#[derive(Clone)]
pub struct PodmanClient {
    http: reqwest::Client,
    socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BladeInfo {
    pub version: String,
    pub containers: u64,
    pub images: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot reach the Podman API at {socket}: {reason}")]
    Unreachable { socket: String, reason: String },
    #[error("Podman answered {status}: {message}")]
    Api { status: u16, message: String },
}

/// A blade's Podman, as shisa uses it: the libpod client here, or a test's fake.
#[async_trait::async_trait]
pub trait Podman: Send + Sync {
    /// Does the image exist on this blade? (`GET /images/{name}/exists`: 204 or 404.)
    async fn image_exists(&self, reference: &str) -> Result<bool, PodmanError>;
    /// `POST /containers/create` with a libpod SpecGenerator body; returns the id.
    async fn create(&self, spec: &serde_json::Value) -> Result<String, PodmanError>;
    async fn start(&self, id: &str) -> Result<(), PodmanError>;
    async fn stop(&self, id: &str, timeout: u64) -> Result<(), PodmanError>;
    /// Remove; a container that is already gone is not an error.
    async fn remove(&self, id: &str, force: bool) -> Result<(), PodmanError>;
    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, PodmanError>;
    /// The last `tail` lines of output (stdout and stderr interleaved).
    /// The last `tail` lines of output, at most `LOG_BYTES` of them (`cut` says so).
    async fn logs(&self, id: &str, tail: u32) -> Result<Logs, PodmanError>;
    /// Run a command in a running container as `user`, bounded in time and output.
    async fn exec(&self, id: &str, e: &ExecRequest<'_>) -> Result<ExecResult, PodmanError>;
    /// Containers with a label, for reconciliation: (id, name, state, labels).
    async fn list_labelled(&self, label: &str) -> Result<Vec<Listed>, PodmanError>;
    /// The stream of `died` events for shisa's containers (newline-delimited JSON).
    async fn died_events(&self, label: &str) -> Result<DiedEvents, PodmanError>;
    /// Pull an image with credentials (`X-Registry-Auth`: base64 JSON, as Podman's clients send it).
    async fn pull(
        &self,
        reference: &str,
        username: &str,
        password: &str,
        tls_verify: bool,
    ) -> Result<(), PodmanError>;
    /// An image's id, architecture and OCI config (Env, Entrypoint, Cmd, Labels, WorkingDir).
    async fn image_inspect(&self, reference: &str) -> Result<ImageInfo, PodmanError>;
    /// Mount a (created, not started) container's root filesystem on the blade; returns its path.
    async fn mount(&self, id: &str) -> Result<String, PodmanError>;
    async fn unmount(&self, id: &str) -> Result<(), PodmanError>;
    /// Create a bridge network for an IP pool unless it exists, on a bridge named
    /// by `pool_bridge` (Podman's own pick, `cni-podmanN`, can be one the host's
    /// or another Podman's network already holds with another address).
    async fn ensure_network(
        &self,
        name: &str,
        subnet: &str,
        gateway: &str,
    ) -> Result<(), PodmanError>;
    /// `GET /libpod/info`: version and counts.
    async fn info(&self) -> Result<BladeInfo, PodmanError>;
    /// Create an owner's own network unless it exists: a bridge shisa names, a subnet Podman
    /// picks from its pools, `isolate` (containers on other bridges cannot reach it).
    async fn ensure_isolated_network(
        &self,
        name: &str,
        bridge: &str,
        labels: &serde_json::Value,
    ) -> Result<(), PodmanError>;
    /// Remove a network; one still in use stays (an error the caller may ignore).
    async fn remove_network(&self, name: &str) -> Result<(), PodmanError>;
    /// CPU time a container has used, in nanoseconds (`GET /containers/stats`, one sample);
    /// `None` when it is not running.
    async fn cpu_nanos(&self, id: &str) -> Result<Option<u64>, PodmanError>;
    /// The blade's images (`GET /images/json`).
    async fn list_images(&self) -> Result<Vec<BladeImage>, PodmanError>;
    /// Remove an image unless a container uses it (Podman refuses then: an `Api` error).
    async fn remove_image(&self, id: &str) -> Result<(), PodmanError>;
    /// Move a stopped container to another address on a network (disconnect, then
    /// connect with the address).
    async fn readdress(&self, network: &str, id: &str, ip: &str) -> Result<(), PodmanError>;
}

/// An image on a blade, as `GET /images/json` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct BladeImage {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Names", default)]
    pub names: Option<Vec<String>>,
    #[serde(rename = "Size", default)]
    pub size: u64,
    /// Containers (any, shisa's or not) made from it.
    #[serde(rename = "Containers", default)]
    pub containers: u64,
    /// Seconds since the epoch.
    #[serde(rename = "Created", default)]
    pub created: i64,
}

/// The most of a container's log read into memory: a line can be any length, so `tail`
/// alone does not bound it.
pub const LOG_BYTES: usize = 64 * 1024;

/// A container's last output.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    pub text: String,
    /// More was there than `LOG_BYTES`; this is its end.
    pub cut: bool,
    /// Podman did not finish within `LOG_TIME` (it reads a huge line slowly): what came.
    pub slow: bool,
}

/// The longest shisa waits for a container's logs (the reply must reach Mattermost within its 3 s).
pub const LOG_TIME: Duration = Duration::from_secs(2);

/// The `died` events of a blade's containers, as they come.
pub type DiedEvents = std::pin::Pin<Box<dyn futures_util::Stream<Item = DiedEvent> + Send>>;

impl PodmanClient {
    pub fn new(socket: &Path) -> PodmanClient {
        let http = reqwest::Client::builder()
            .unix_socket(socket)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("reqwest client");
        PodmanClient {
            http,
            socket: socket.to_path_buf(),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, PodmanError> {
        rb.send().await.map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: reqwest::Error) -> PodmanError {
        PodmanError::Unreachable {
            socket: self.socket.display().to_string(),
            reason: e.without_url().to_string(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, PodmanError> {
        let r = self.send(self.http.get(format!("{API}{path}"))).await?;
        self.check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))
    }

    async fn check(&self, r: reqwest::Response) -> Result<reqwest::Response, PodmanError> {
        let status = r.status();
        if status.is_success() || status.as_u16() == 304 {
            return Ok(r);
        }
        #[derive(Deserialize)]
        struct ErrBody {
            #[serde(default)]
            message: String,
        }
        let message = r
            .json::<ErrBody>()
            .await
            .map(|b| b.message)
            .unwrap_or_default();
        Err(PodmanError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn url(path: &str, segment: &str, rest: &str) -> String {
        format!("{API}{path}/{}{rest}", enc(segment))
    }
}

#[async_trait::async_trait]
impl Podman for PodmanClient {
    /// Does the image exist on this blade? (`GET /images/{name}/exists`: 204 or 404.)
    async fn image_exists(&self, reference: &str) -> Result<bool, PodmanError> {
        let r = self
            .send(self.http.get(Self::url("/images", reference, "/exists")))
            .await?;
        match r.status().as_u16() {
            204 => Ok(true),
            404 => Ok(false),
            _ => self.check(r).await.map(|_| false),
        }
    }

    /// `POST /containers/create` with a libpod SpecGenerator body; returns the id.
    async fn create(&self, spec: &serde_json::Value) -> Result<String, PodmanError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let r = self
            .send(
                self.http
                    .post(format!("{API}/containers/create"))
                    .json(spec),
            )
            .await?;
        let c: Created = self
            .check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(c.id)
    }

    async fn start(&self, id: &str) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.post(Self::url("/containers", id, "/start")))
            .await?;
        self.check(r).await.map(|_| ())
    }

    async fn stop(&self, id: &str, timeout: u64) -> Result<(), PodmanError> {
        let r = self
            .send(
                self.http
                    .post(Self::url(
                        "/containers",
                        id,
                        &format!("/stop?timeout={timeout}"),
                    ))
                    .timeout(Duration::from_secs(timeout + 30)),
            )
            .await?;
        self.check(r).await.map(|_| ())
    }

    /// Remove; a container that is already gone is not an error.
    async fn remove(&self, id: &str, force: bool) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.delete(Self::url(
                "/containers",
                id,
                &format!("?force={force}&v=true"),
            )))
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(());
        }
        self.check(r).await.map(|_| ())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerState>, PodmanError> {
        #[derive(Deserialize)]
        struct Inspect {
            #[serde(rename = "State")]
            state: State,
        }
        #[derive(Deserialize)]
        struct State {
            #[serde(rename = "Status")]
            status: String,
            #[serde(rename = "Running")]
            running: bool,
            #[serde(rename = "ExitCode", default)]
            exit_code: i32,
            #[serde(rename = "OOMKilled", default)]
            oom_killed: bool,
        }
        let r = self
            .send(self.http.get(Self::url("/containers", id, "/json")))
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(None);
        }
        let i: Inspect = self
            .check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(Some(ContainerState {
            status: i.state.status,
            running: i.state.running,
            exit_code: i.state.exit_code,
            oom_killed: i.state.oom_killed,
        }))
    }

    /// The last `tail` lines of output (stdout and stderr interleaved), streamed into a
    /// bounded buffer: only the last `LOG_BYTES` are ever held.
    async fn logs(&self, id: &str, tail: u32) -> Result<Logs, PodmanError> {
        let resp = async {
            let r = self
                .send(self.http.get(Self::url(
                    "/containers",
                    id,
                    &format!("/logs?stdout=true&stderr=true&follow=false&tail={tail}"),
                )))
                .await?;
            self.check(r).await
        };
        let (text, cut, slow) = drain(resp, LOG_BYTES, LOG_TIME).await?;
        Ok(Logs { text, cut, slow })
    }

    /// Run a command in a running container as `user`, bounded in time and output.
    async fn exec(&self, id: &str, e: &ExecRequest<'_>) -> Result<ExecResult, PodmanError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        let body = serde_json::json!({
            "AttachStdout": true, "AttachStderr": true, "AttachStdin": false, "Tty": false,
            "Cmd": e.cmd, "Env": e.env, "WorkingDir": e.workdir, "User": e.user, "Privileged": false,
        });
        let r = self
            .send(
                self.http
                    .post(Self::url("/containers", id, "/exec"))
                    .json(&body),
            )
            .await?;
        let c: Created = self
            .check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        let start = self
            .http
            .post(Self::url("/exec", &c.id, "/start"))
            .json(&serde_json::json!({"Detach": false, "Tty": false}))
            .timeout(e.timeout + Duration::from_secs(5))
            .send();
        // Drain everything (a writer blocked on a full pipe would never exit) but keep only the tail.
        let resp = async {
            let r = start.await.map_err(|e| self.unreachable(e))?;
            self.check(r).await
        };
        let (output, truncated, timed_out) = drain(resp, e.max_output, e.timeout).await?;
        #[derive(Deserialize)]
        struct ExecInspect {
            #[serde(rename = "ExitCode", default)]
            exit_code: Option<i32>,
            #[serde(rename = "Running", default)]
            running: bool,
        }
        let r = self
            .send(self.http.get(Self::url("/exec", &c.id, "/json")))
            .await?;
        let ins: ExecInspect = self
            .check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(ExecResult {
            exit_code: if ins.running { None } else { ins.exit_code },
            output,
            truncated,
            timed_out: timed_out || ins.running,
        })
    }

    /// Containers with a label, for reconciliation: (id, name, state, labels).
    async fn list_labelled(&self, label: &str) -> Result<Vec<Listed>, PodmanError> {
        let filters = serde_json::json!({"label": [label]}).to_string();
        let r = self
            .send(
                self.http
                    .get(format!("{API}/containers/json"))
                    .query(&[("all", "true"), ("filters", filters.as_str())]),
            )
            .await?;
        self.check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// The stream of `died` events for shisa's containers (newline-delimited JSON).
    async fn died_events(&self, label: &str) -> Result<DiedEvents, PodmanError> {
        use futures_util::StreamExt;
        let filters =
            serde_json::json!({"type": ["container"], "event": ["died"], "label": [label]})
                .to_string();
        let client = reqwest::Client::builder()
            .unix_socket(self.socket.as_path())
            .build()
            .expect("client");
        let r = client
            .get(format!("{API}/events"))
            .query(&[("stream", "true"), ("filters", filters.as_str())])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let r = self.check(r).await?;
        let mut pending = Vec::<u8>::new();
        Ok(Box::pin(r.bytes_stream().flat_map(move |chunk| {
            let mut out = Vec::new();
            if let Ok(c) = chunk {
                pending.extend_from_slice(&c);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                        let attrs = &v["Actor"]["Attributes"];
                        out.push(DiedEvent {
                            id: v["Actor"]["ID"]
                                .as_str()
                                .or(v["id"].as_str())
                                .unwrap_or_default()
                                .to_string(),
                            exit_code: attrs["containerExitCode"]
                                .as_str()
                                .and_then(|s| s.parse().ok()),
                        });
                    }
                }
            }
            futures_util::stream::iter(out)
        })))
    }

    /// Pull an image with credentials (`X-Registry-Auth`: base64 JSON, as Podman's clients send it).
    async fn pull(
        &self,
        reference: &str,
        username: &str,
        password: &str,
        tls_verify: bool,
    ) -> Result<(), PodmanError> {
        use base64::Engine;
        let auth = serde_json::json!({"username": username, "password": password}).to_string();
        let header = base64::engine::general_purpose::URL_SAFE.encode(auth);
        let r = self
            .send(
                self.http
                    .post(format!("{API}/images/pull"))
                    .query(&[
                        ("reference", reference),
                        ("tlsVerify", if tls_verify { "true" } else { "false" }),
                        ("quiet", "true"),
                    ])
                    .header("X-Registry-Auth", header)
                    .timeout(Duration::from_secs(600)),
            )
            .await?;
        let r = self.check(r).await?;
        let body = r.text().await.map_err(|e| self.unreachable(e))?;
        // Errors can arrive inside a 200 stream as {"error": "..."}.
        for line in body.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
                    return Err(PodmanError::Api {
                        status: 500,
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// An image's id, architecture and OCI config (Env, Entrypoint, Cmd, Labels, WorkingDir).
    async fn image_inspect(&self, reference: &str) -> Result<ImageInfo, PodmanError> {
        let v: serde_json::Value = self
            .get_json(&format!("/images/{}/json", enc(reference)))
            .await?;
        Ok(ImageInfo {
            id: v["Id"].as_str().unwrap_or_default().to_string(),
            architecture: v["Architecture"].as_str().unwrap_or("amd64").to_string(),
            size: v["Size"].as_u64().unwrap_or(0),
            config: v["Config"].clone(),
        })
    }

    /// Mount a (created, not started) container's root filesystem on the blade; returns its path.
    async fn mount(&self, id: &str) -> Result<String, PodmanError> {
        let r = self
            .send(self.http.post(Self::url("/containers", id, "/mount")))
            .await?;
        let r = self.check(r).await?;
        // Podman 4.3 answers with the bare path (newer versions quote it as JSON).
        let t = r.text().await.map_err(|e| self.unreachable(e))?;
        Ok(t.trim().trim_matches('"').to_string())
    }

    async fn unmount(&self, id: &str) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.post(Self::url("/containers", id, "/unmount")))
            .await?;
        self.check(r).await.map(|_| ())
    }

    /// Create a bridge network for an IP pool unless it exists, on a bridge named
    /// by `pool_bridge` (Podman's own pick, `cni-podmanN`, can be one the host's
    /// or another Podman's network already holds with another address).
    async fn ensure_network(
        &self,
        name: &str,
        subnet: &str,
        gateway: &str,
    ) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.get(Self::url("/networks", name, "/exists")))
            .await?;
        if r.status().as_u16() == 204 {
            return Ok(());
        }
        let body = serde_json::json!({"name": name, "driver": "bridge", "network_interface": pool_bridge(name, subnet), "subnets": [{"subnet": subnet, "gateway": gateway}], "labels": {"shisa.managed": "true"}});
        let r = self
            .send(self.http.post(format!("{API}/networks/create")).json(&body))
            .await?;
        if r.status().as_u16() == 409 {
            return Ok(()); // created meanwhile
        }
        self.check(r).await.map(|_| ())
    }

    async fn ensure_isolated_network(
        &self,
        name: &str,
        bridge: &str,
        labels: &serde_json::Value,
    ) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.get(Self::url("/networks", name, "/exists")))
            .await?;
        if r.status().as_u16() == 204 {
            return Ok(());
        }
        let body = serde_json::json!({"name": name, "driver": "bridge", "network_interface": bridge, "options": {"isolate": "true"}, "labels": labels});
        let r = self
            .send(self.http.post(format!("{API}/networks/create")).json(&body))
            .await?;
        if r.status().as_u16() == 409 {
            return Ok(()); // created meanwhile
        }
        self.check(r).await.map(|_| ())
    }

    async fn remove_network(&self, name: &str) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.delete(Self::url("/networks", name, "")))
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(());
        }
        self.check(r).await.map(|_| ())
    }

    async fn cpu_nanos(&self, id: &str) -> Result<Option<u64>, PodmanError> {
        let r = self
            .send(self.http.get(format!(
                "{API}/containers/stats?stream=false&containers={}",
                enc(id)
            )))
            .await?;
        // A container that is not running: 409 (or an error inside the answer).
        if matches!(r.status().as_u16(), 404 | 409) {
            return Ok(None);
        }
        let v: serde_json::Value = self
            .check(r)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(v["Stats"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s["CPUNano"].as_u64()))
    }

    async fn list_images(&self) -> Result<Vec<BladeImage>, PodmanError> {
        self.get_json("/images/json").await
    }

    async fn remove_image(&self, id: &str) -> Result<(), PodmanError> {
        let r = self
            .send(self.http.delete(Self::url("/images", id, "")))
            .await?;
        if r.status().as_u16() == 404 {
            return Ok(());
        }
        self.check(r).await.map(|_| ())
    }

    async fn readdress(&self, network: &str, id: &str, ip: &str) -> Result<(), PodmanError> {
        let r = self
            .send(
                self.http
                    .post(Self::url("/networks", network, "/disconnect"))
                    .json(&serde_json::json!({"Container": id, "Force": true})),
            )
            .await?;
        self.check(r).await?;
        let r = self
            .send(
                self.http
                    .post(Self::url("/networks", network, "/connect"))
                    .json(&serde_json::json!({"container": id, "static_ips": [ip]})),
            )
            .await?;
        self.check(r).await.map(|_| ())
    }

    /// `GET /libpod/info`: version and counts.
    async fn info(&self) -> Result<BladeInfo, PodmanError> {
        #[derive(Deserialize)]
        struct Info {
            version: Version,
            store: StoreInfo,
        }
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "Version")]
            version: String,
        }
        #[derive(Deserialize)]
        struct StoreInfo {
            #[serde(rename = "containerStore")]
            container_store: Count,
            #[serde(rename = "imageStore")]
            image_store: Count,
        }
        #[derive(Deserialize)]
        struct Count {
            number: u64,
        }
        let i: Info = self.get_json("/info").await?;
        Ok(BladeInfo {
            version: i.version.version,
            containers: i.store.container_store.number,
            images: i.store.image_store.number,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub exit_code: i32,
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Names", default)]
    pub names: Vec<String>,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiedEvent {
    pub id: String,
    pub exit_code: Option<i32>,
}

pub struct ExecRequest<'a> {
    pub cmd: &'a [String],
    pub env: Vec<String>,
    pub workdir: &'a str,
    pub user: &'a str,
    pub timeout: Duration,
    pub max_output: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
}

fn enc(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Incremental version of [`demux`] for streams: frames may span chunks;
/// only the last `max` bytes of payload are kept.
pub struct Demux {
    max: usize,
    header: Vec<u8>,
    remaining: usize,
    framed: Option<bool>,
    out: std::collections::VecDeque<u8>,
    dropped: bool,
}

impl Demux {
    pub fn new(max: usize) -> Self {
        Demux {
            max,
            header: Vec::with_capacity(8),
            remaining: 0,
            framed: None,
            out: Default::default(),
            dropped: false,
        }
    }

    fn keep(&mut self, b: &[u8]) {
        self.out.extend(b);
        if self.out.len() > self.max {
            let n = self.out.len() - self.max;
            self.out.drain(..n);
            self.dropped = true;
        }
    }

    pub fn push(&mut self, mut b: &[u8]) {
        if self.framed.is_none() && !b.is_empty() {
            self.framed = Some(matches!(b[0], 0..=2));
        }
        if self.framed == Some(false) {
            self.keep(b);
            return;
        }
        while !b.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(b.len());
                let (now, rest) = b.split_at(n);
                self.keep(now);
                self.remaining -= n;
                b = rest;
                continue;
            }
            let need = 8 - self.header.len();
            let n = need.min(b.len());
            self.header.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.header.len() == 8 {
                self.remaining = u32::from_be_bytes([
                    self.header[4],
                    self.header[5],
                    self.header[6],
                    self.header[7],
                ]) as usize;
                self.header.clear();
            }
        }
    }

    pub fn finish(self) -> (String, bool) {
        let v: Vec<u8> = self.out.into_iter().collect();
        (String::from_utf8_lossy(&v).into_owned(), self.dropped)
    }
}

/// Read an answer's (framed) output stream to its end, or for at most `within`, keeping only
/// its last `max` bytes, whatever its size: (text, cut, timed out). All of it is drained (a
/// writer blocked on a full pipe would never exit); a stream that breaks ends the reading.
async fn drain(
    resp: impl std::future::Future<Output = Result<reqwest::Response, PodmanError>>,
    max: usize,
    within: Duration,
) -> Result<(String, bool, bool), PodmanError> {
    use futures_util::StreamExt;
    let mut dm = Demux::new(max);
    let read = async {
        let mut s = resp.await?.bytes_stream();
        while let Some(Ok(chunk)) = s.next().await {
            dm.push(&chunk);
        }
        Ok::<_, PodmanError>(())
    };
    let timed_out = match tokio::time::timeout(within, read).await {
        Ok(r) => {
            r?;
            false
        }
        Err(_) => true,
    };
    let (text, cut) = dm.finish();
    Ok((text, cut, timed_out))
}

/// Undo the Docker stream framing (8-byte header: stream, 0, 0, 0, u32 BE
/// length). Keeps at most `max` bytes of output; says whether it cut.
/// Bytes that are not framed (a TTY stream) are taken as they are.
pub fn demux(buf: &[u8], max: usize) -> (String, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    // Frames start with a stream byte 0-2; text output never starts that way.
    let framed = buf.first().is_some_and(|b| matches!(b, 0..=2));
    if !framed {
        out.extend_from_slice(buf);
    } else {
        while i + 8 <= buf.len() {
            let len = u32::from_be_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]) as usize;
            let end = (i + 8).saturating_add(len).min(buf.len());
            out.extend_from_slice(&buf[i + 8..end]);
            i = end;
        }
    }
    let truncated = out.len() > max;
    if truncated {
        // Keep the end: the last lines matter most.
        out.drain(..out.len() - max);
    }
    (String::from_utf8_lossy(&out).into_owned(), truncated)
}

/// The bridge of an IP pool's network: `shp` and 12 hex digits of the name and
/// subnet, so a pool's bridge is its own (at most 15 characters, Linux's limit).
pub fn pool_bridge(network: &str, subnet: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{network} {subnet}").as_bytes());
    format!("shp{}", &hex::encode(h)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn demux_frames() {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, 3];
        b.extend_from_slice(b"ab\n");
        b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 2]);
        b.extend_from_slice(b"e\n");
        assert_eq!(demux(&b, 100), ("ab\ne\n".into(), false));
        assert_eq!(demux(&b, 2), ("e\n".into(), true));
        // A frame claiming more than there is does not panic.
        assert_eq!(demux(&[1, 0, 0, 0, 255, 255, 255, 255, b'x'], 10).0, "x");
    }

    proptest::proptest! {
        #[test]
        fn incremental_demux_matches_whole(b in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(2u8), proptest::num::u8::ANY], 0..200), cut in 0usize..200, max in 1usize..64) {
            let cut = cut.min(b.len());
            let mut d = Demux::new(max);
            d.push(&b[..cut]);
            d.push(&b[cut..]);
            proptest::prop_assert_eq!(d.finish(), demux(&b, max));
        }

        #[test]
        fn demux_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64), max in 0usize..32) {
            let _ = demux(&b, max);
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub size: u64,
    pub architecture: String,
    pub config: serde_json::Value,
}
