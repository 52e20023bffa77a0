//! The test harness: real services started once per test run (slapd, a
//! Podman API service), each with private configuration and temp dirs, and
//! protocol-faithful fakes for what cannot run here (Mattermost).
//!
//! Long-lived children are spawned from a parked thread with
//! PR_SET_PDEATHSIG, so they die with the test binary and nothing leaks.

use shisa::podman::Podman as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::Digest;
use shisa::config::Config;
use shisa::identity::users_file::UsersFile;
use shisa::mattermost::Reply;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One temp root per test run. Before it is made, whatever runs that died
/// without cleaning up left behind (containers, bridges, directories) is swept.
pub fn run_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        sweep_dead_runs();
        let root = tempfile::Builder::new()
            .prefix("shisa-it-")
            .tempdir()
            .unwrap()
            .keep();
        std::fs::write(root.join("owner"), process_tag(std::process::id())).unwrap();
        root
    })
}

/// A live process's pid and start time (so a reused pid is not taken for us).
fn process_tag(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 22 (starttime) counts from after the parenthesised command name.
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .unwrap_or("")
        .to_string();
    format!("{pid} {start}")
}

/// A short tag unique to this run, for host-global names (bridges).
pub fn run_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let name = run_root()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let h = sha2::Sha256::digest(name.as_bytes());
        hex::encode(&h[..3])
    })
}

/// Clean up after test runs whose process is gone (killed halfway, say): remove
/// their containers through their own Podman storage (which also tears down
/// their CNI state), delete their bridges, then their directories.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with("shisa-it-") || !dir.is_dir() {
            continue;
        }
        match std::fs::read_to_string(dir.join("owner")) {
            Ok(tag) => {
                let pid: u32 = tag
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                if pid != 0 && process_tag(pid) == tag {
                    continue; // a run still going
                }
            }
            Err(_) => {
                // Being created right now, or from before owners were recorded: leave the young ones.
                let young = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().map(|d| d.as_secs() < 60).unwrap_or(true))
                    .unwrap_or(true);
                if young {
                    continue;
                }
            }
        }
        for sub in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let pdir = sub.path();
            if !pdir.join("containers.conf").exists() {
                continue;
            }
            for args in [
                &["pod", "rm", "-af"][..],
                &["rm", "-af", "-t", "0"][..],
                &["network", "prune", "-f"][..],
            ] {
                let _ = podman_at(&pdir)
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(pdir.join("root"))
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(bridges) = std::fs::read_to_string(dir.join("bridges")) {
            for b in bridges.lines().filter(|b| !b.is_empty()) {
                let _ = Command::new("ip")
                    .args(["link", "del", b])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Private Podman configuration in `dir`: its own default network (name, bridge,
/// subnet, IPAM state), events log and temp dir, so nothing is shared with the
/// host's Podman or another test's, whatever the host already has.
fn private_podman_conf(dir: &Path) {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let net_dir = dir.join("networks");
    for d in [&net_dir, &dir.join("tmp"), &dir.join("ipam")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let net = format!("shisatest{n}");
    let bridge = format!("shp{}n{n}", run_tag());
    // The name goes on record first, so a sweep finds it even if we die right now.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_root().join("bridges"))
        .unwrap();
    writeln!(f, "{bridge}").unwrap();
    let subnet = format!("10.231.{n}");
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": net,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": format!("{subnet}.0/24"), "gateway": format!("{subnet}.1")}]],
                      "dataDir": dir.join("ipam").display().to_string()}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"},
            {"type": "tuning"}
        ]
    });
    std::fs::write(
        net_dir.join(format!("{net}.conflist")),
        serde_json::to_string_pretty(&conflist).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\ntmp_dir = \"{tmp}\"\nevents_logger = \"file\"\nevents_logfile_path = \"{events}\"\n[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{net_dir}\"\ndefault_network = \"{net}\"\ndefault_subnet = \"{subnet}.0/24\"\ndefault_subnet_pools = [{{\"base\" = \"10.{pool}.0.0/16\", \"size\" = 24}}]\n",
            pool = 100 + n as u16,
            tmp = dir.join("tmp").display(),
            events = dir.join("events.log").display(),
            net_dir = net_dir.display(),
        ),
    )
    .unwrap();
}

pub fn demo_users() -> UsersFile {
    UsersFile::load(&repo().join("deploy/demo-users.toml")).unwrap()
}

/// Spawn a child that dies with this process, from a thread that never exits
/// (PDEATHSIG fires when the *spawning thread* ends).
fn spawn_daemon(mut cmd: Command) -> u32 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn service");
        tx.send(child.id()).unwrap();
        let _keep = child;
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap()
}

/// The `podman` command line on the private Podman storage and configuration in `dir`.
fn podman_at(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"));
    c
}

/// A Podman API service on the storage in `dir`, listening on `socket`, once it answers.
fn serve_podman(dir: &Path, socket: &Path) -> u32 {
    let _ = std::fs::remove_file(socket);
    let mut cmd = podman_at(dir);
    cmd.args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = spawn_daemon(cmd);
    wait_for("podman system service", || {
        std::os::unix::net::UnixStream::connect(socket).is_ok()
    });
    pid
}

/// The `podman` command line on the shared test Podman's storage.
pub fn podman_cli() -> Command {
    podman_at(podman().parent().unwrap())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not come up within 10 s");
}

pub struct Slapd {
    pub url: String,
    pub base_dn: String,
    pub bind_dn: String,
    pub password: String,
}

/// A throwaway OpenLDAP with the demo users (LDIF generated from demo-users.toml).
pub fn slapd() -> &'static Slapd {
    static S: OnceLock<Slapd> = OnceLock::new();
    S.get_or_init(|| {
        let dir = run_root().join("slapd");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let base_dn = "dc=example,dc=edu".to_string();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\ninclude /etc/ldap/schema/nis.schema\ninclude /etc/ldap/schema/inetorgperson.schema\npidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\ndatabase mdb\nsuffix \"{base_dn}\"\nrootdn \"cn=admin,{base_dn}\"\nrootpw test-root-pw\ndirectory {d}/db\naccess to attrs=userPassword by anonymous auth by self write by * none\naccess to * by * read\n",
            d = dir.display()
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        let ldif = demo_users().to_ldif(&base_dn, &shared_data_dir());
        std::fs::write(dir.join("demo.ldif"), ldif).unwrap();
        let out = Command::new("slapadd").arg("-f").arg(dir.join("slapd.conf")).arg("-l").arg(dir.join("demo.ldif")).output().expect("slapadd (is slapd installed? run tests/run.sh)");
        assert!(out.status.success(), "slapadd: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let url = format!("ldap://127.0.0.1:{port}");
        let mut cmd = Command::new("slapd");
        cmd.arg("-f").arg(dir.join("slapd.conf")).arg("-h").arg(format!("{url}/")).arg("-d").arg("0").stdout(Stdio::null()).stderr(Stdio::null());
        spawn_daemon(cmd);
        wait_for("slapd", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Slapd { url, base_dn: base_dn.clone(), bind_dn: format!("cn=admin,{base_dn}"), password: "test-root-pw".into() }
    })
}

/// The data dir whose `home/` the LDAP homes point at (same rule as the static directory).
pub fn shared_data_dir() -> PathBuf {
    run_root().join("shared-data")
}

/// A rootful Podman API service with private storage and containers.conf.
pub fn podman() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = run_root().join("podman");
        std::fs::create_dir_all(&dir).unwrap();
        private_podman_conf(&dir);
        let sock = dir.join("podman.sock");
        serve_podman(&dir, &sock);
        sock
    })
}

#[derive(Default, Clone)]
pub enum Dir {
    #[default]
    Static,
    Ldap,
}

#[derive(Default, Clone)]
pub struct Opts {
    pub directory: Dir,
    pub mattermost_url: Option<String>,
    pub bot_token: Option<String>,
    pub ldap_linking: bool,
    pub podman: bool,
    pub tokens: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// GPU indexes of the blade (a fake CDI kind, see `fake_gpus`).
    pub gpus: Vec<String>,
    pub gpu_share: u32,
    /// Extra TOML appended to the configuration (limits, templates).
    pub extra: String,
    /// Replaces the one local blade: `[[blades]]` tables of the test's own.
    pub blades: Option<String>,
    /// Listen on this port (when another service must know it in advance).
    pub listen_port: Option<u16>,
    /// Another static users file.
    pub users_file: Option<PathBuf>,
    /// Extra keys of `[server]` (e.g. `trusted_proxies`).
    pub server_extra: String,
    /// Outside services of the test's own (`fakes`); the rest are real.
    pub services: shisa::app::Services,
}

pub const TOKEN: &str = "test-container-token";
pub const TOKEN2: &str = "test-job-token";

pub fn config_text(o: &Opts, data_dir: &Path) -> String {
    let tokens = if o.tokens.is_empty() {
        vec![TOKEN.to_string(), TOKEN2.to_string()]
    } else {
        o.tokens.clone()
    };
    let tokens = tokens
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The native squashfs writer runs as `shisa sif squash`; in-process, this test binary is not shisa.
    let helper = env!("CARGO_BIN_EXE_shisa");
    let mut s = format!(
        "[sif]\nhelper = {helper:?}\n[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_seconds = 2\n{}[storage]\ndata_dir = {:?}\n[mattermost]\ntokens = [{tokens}]\nlinking = {:?}\ncontact = \"the test admins\"\ntimeout_seconds = 3\n",
        o.server_extra,
        data_dir.display().to_string(),
        if o.ldap_linking { "mattermost-ldap" } else { "username" }
    );
    if let Some(u) = &o.mattermost_url {
        s.push_str(&format!("url = {u:?}\n"));
    }
    if let Some(t) = &o.bot_token {
        s.push_str(&format!("bot_token = {t:?}\n"));
    }
    match o.directory {
        Dir::Static => s.push_str(&format!(
            "[directory]\nsource = \"static\"\nusers_file = {:?}\ncache_seconds = 0\n",
            o.users_file
                .clone()
                .unwrap_or_else(|| repo().join("deploy/demo-users.toml"))
                .display()
                .to_string()
        )),
        Dir::Ldap => {
            let l = slapd();
            s.push_str(&format!(
                "[directory]\nsource = \"ldap\"\ncache_seconds = 0\n[directory.ldap]\nurl = {:?}\nbind_dn = {:?}\nbind_password = {:?}\nbase_dn = {:?}\ntimeout_seconds = 3\n",
                l.url, l.bind_dn, l.password, l.base_dn
            ))
        }
    }
    // The demo's one course: sensei sees its members' things, through it only.
    s.push_str("[courses.ai-course]\ninstructors = [\"sensei\"]\n");
    if let Some(b) = &o.blades {
        s.push_str(b);
        s.push('\n');
    } else {
        let sock = if o.podman {
            podman().to_path_buf()
        } else {
            run_root().join("no-podman.sock")
        };
        s.push_str(&format!(
            "[[blades]]\nname = \"local\"\npodman_socket = {:?}\naddress = \"127.0.0.1\"\n",
            sock.display().to_string()
        ));
        // Each stack gets its own host ports: stacks run in parallel against one Podman.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let first = 61000 + n * 40;
        s.push_str(&format!("port_range = [{first}, {}]\n", first + 39));
        if !o.gpus.is_empty() {
            fake_gpus();
            s.push_str(&format!(
                "gpus = {:?}\ngpu_kind = \"shisa.test/gpu\"\ngpu_share = {}\n",
                o.gpus,
                o.gpu_share.max(1)
            ));
        }
    }
    s.push_str(&o.extra);
    s.push('\n');
    s.push_str("[templates.busybox]\nimage = \"localhost/busybox:latest\"\ncpus = 1\nmemory = \"512M\"\ncomment = \"tiny\"\n");
    s
}

/// A shisa running in-process on a loopback port.
pub struct Stack {
    pub cfg: Config,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    pub async fn start(o: Opts) -> Stack {
        let data_dir = o
            .data_dir
            .clone()
            .unwrap_or_else(|| tempfile::tempdir_in(run_root()).unwrap().keep());
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config_text(&o, &data_dir)).unwrap();
        Self::start_full(
            &path,
            data_dir,
            o.listen_port.unwrap_or(0),
            o.services.clone(),
        )
        .await
    }

    pub async fn start_with(path: &Path, data_dir: PathBuf) -> Stack {
        Self::start_on(path, data_dir, 0).await
    }

    pub async fn start_on(path: &Path, data_dir: PathBuf, port: u16) -> Stack {
        Self::start_full(path, data_dir, port, Default::default()).await
    }

    async fn start_full(
        path: &Path,
        data_dir: PathBuf,
        port: u16,
        services: shisa::app::Services,
    ) -> Stack {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut for_chat = Config::load(path).unwrap();
        for_chat.server.public_url = Some(format!("http://{addr}"));
        let cfg = Config::load(path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        let handle = tokio::spawn(shisa::cli::serve::serve_with(cfg, listener, stop, services));
        // The service opens (and migrates) its database once spawned: a test that opens the
        // store first would race it, so the stack is handed over once it answers.
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if handle.is_finished() {
                break;
            }
            if client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Stack {
            cfg: for_chat,
            addr,
            data_dir,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What `shisa chat --as USER LINE` does.
    pub async fn chat(&self, user: &str, line: &str) -> Vec<Reply> {
        let id = shisa::cli::chat::demo_user_id(&demo_users(), user);
        shisa::cli::chat::send(&self.cfg, user, &id, line, Duration::from_secs(20), |_| {})
            .await
            .unwrap()
    }

    /// The final reply's text.
    pub async fn say(&self, user: &str, line: &str) -> String {
        let r = self.chat(user, line).await;
        let last = r.last().unwrap();
        assert!(last.is_final(), "no final reply to {line:?}: {r:?}");
        last.text.clone()
    }

    pub fn store(&self) -> shisa::store::Store {
        shisa::store::Store::open(&self.cfg.db_path()).unwrap()
    }

    /// The first direct message (from the outbox) to `user` containing `needle`, waiting up
    /// to a minute; panics with everything seen.
    pub async fn dm_containing(&self, user: &str, needle: &str) -> String {
        let mut seen = Vec::new();
        for _ in 0..600 {
            for m in self.store().outbox_take(user).unwrap() {
                seen.push(m.message);
            }
            if let Some(m) = seen.iter().find(|m| m.contains(needle)) {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no message to {user} containing {needle:?}; got {seen:?}");
    }

    /// Stop shisa, then the teardown check: the test must have left nothing behind,
    /// in the database (containers, leases, open queue work, builds, Slurm jobs) or
    /// on its blades (containers or pods of this shisa instance). Fails naming it.
    pub async fn stop(mut self) {
        self.shut_down().await;
        let left = self.left_behind().await;
        assert!(
            left.is_empty(),
            "the test left things behind (remove them before stop):\n  {}",
            left.join("\n  ")
        );
    }

    /// Stop shisa as a restart would, without the teardown check (the test goes on).
    pub async fn stop_for_restart(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    /// What this stack's shisa still holds or runs.
    pub async fn left_behind(&self) -> Vec<String> {
        let store = self.store();
        let rows = |sql: &'static str| {
            store
                .with(|c| {
                    let mut st = c.prepare(sql)?;
                    let v = st
                        .query_map([], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>();
                    v
                })
                .unwrap()
        };
        let mut left = Vec::new();
        left.extend(rows("SELECT 'container ' || owner || '/' || name || ' on ' || blade || ' (' || state || ')' FROM containers"));
        left.extend(rows("SELECT 'port lease ' || blade || ':' || port FROM port_leases WHERE container_id IS NOT NULL"));
        left.extend(rows(
            "SELECT 'GPU lease ' || blade || ':' || gpu FROM gpu_leases",
        ));
        left.extend(rows(
            "SELECT 'IP lease ' || blade || ':' || ip FROM ip_leases",
        ));
        left.extend(rows(
            "SELECT 'GPU holder job ' || slurm_id FROM gpu_holders",
        ));
        left.extend(rows("SELECT 'queued work ' || kind || ' for ' || owner || ' (' || state || ', request ' || request_id || ')' FROM queue WHERE state IN ('queued', 'running')"));
        left.extend(rows("SELECT 'build ' || id || ' of ' || path || ' (' || state || ')' FROM builds WHERE state IN ('queued', 'running')"));
        left.extend(rows("SELECT 'Slurm job ' || slurm_id || ' of ' || owner || ' (' || state || ')' FROM jobs WHERE done = 0"));
        let instance = store.instance_id().unwrap();
        for b in &self.cfg.blades {
            // A blade behind ssh: its Podman is on this machine too, at the remote socket.
            let sock = b
                .ssh
                .as_ref()
                .map(|s| PathBuf::from(&s.remote_socket))
                .unwrap_or_else(|| b.podman_socket.clone());
            if !sock.exists() {
                continue;
            }
            let client = shisa::podman::PodmanClient::new(&sock);
            if let Ok(list) = client
                .list_labelled(&format!("shisa.instance={instance}"))
                .await
            {
                for l in list {
                    left.push(format!(
                        "{} container {} on blade {} ({})",
                        if l.labels
                            .as_ref()
                            .is_some_and(|m| m.contains_key("shisa.runner"))
                        {
                            "runner"
                        } else {
                            "shisa"
                        },
                        l.names.join(","),
                        b.name,
                        l.state
                    ));
                }
            }
            let pods = Command::new("podman")
                .arg("--remote")
                .arg("--url")
                .arg(format!("unix://{}", sock.display()))
                .args(["pod", "ps", "-q", "--filter"])
                .arg(format!("label=shisa.instance={instance}"))
                .output();
            if let Ok(o) = pods {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    left.push(format!("pod {p} on blade {}", b.name));
                }
            }
        }
        left
    }

    /// `/container rm` every container the database holds for these users (as
    /// each owner would), so a test ends with nothing left.
    pub async fn remove_all(&self, users: &[&str]) {
        for u in users {
            let names: Vec<String> = self
                .store()
                .with(|c| {
                    let mut st = c.prepare("SELECT name FROM containers WHERE owner = ?1")?;
                    let v = st
                        .query_map([u], |r| r.get(0))?
                        .collect::<Result<Vec<_>, _>>();
                    v
                })
                .unwrap();
            for n in names {
                let t = self.say(u, &format!("/container rm --force {n}")).await;
                assert!(
                    t.contains("removed"),
                    "/container rm --force {n} as {u}: {t}"
                );
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Every test ends with `stop` (which checks what it left) or a restart.
        if self.stop.is_some() && !std::thread::panicking() {
            panic!("a Stack was dropped without stop(): end the test with `s.stop().await`");
        }
    }
}

/// `application/x-www-form-urlencoded`, keys in the given order (repeats allowed).
pub fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A protocol-faithful fake of the Mattermost REST API parts shisa uses:
/// `GET /api/v4/users/{id}`, `GET /api/v4/users/me`, `POST /api/v4/channels/direct`,
/// `POST /api/v4/posts` (protocols.md §4.5), with Bearer authentication.
#[derive(Clone, Default)]
pub struct FakeMattermost {
    pub users: Arc<Mutex<Vec<serde_json::Value>>>,
    pub posts: Arc<Mutex<Vec<serde_json::Value>>>,
    pub token: String,
}

impl FakeMattermost {
    pub async fn start(token: &str, users: Vec<serde_json::Value>) -> (FakeMattermost, String) {
        use axum::extract::{Path as AxPath, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use axum::Json;
        let fake = FakeMattermost {
            users: Arc::new(Mutex::new(users)),
            posts: Default::default(),
            token: token.into(),
        };
        fn authed(f: &FakeMattermost, h: &HeaderMap) -> bool {
            h.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {}", f.token))
        }
        async fn user(
            State(f): State<FakeMattermost>,
            h: HeaderMap,
            AxPath(id): AxPath<String>,
        ) -> Result<Json<serde_json::Value>, StatusCode> {
            if !authed(&f, &h) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            let id = if id == "me" {
                "botuser000000000000000000b".to_string()
            } else {
                id
            };
            if id == "botuser000000000000000000b" {
                return Ok(Json(
                    serde_json::json!({"id": id, "username": "shisa", "auth_service": ""}),
                ));
            }
            f.users
                .lock()
                .unwrap()
                .iter()
                .find(|u| u["id"] == id.as_str())
                .cloned()
                .map(Json)
                .ok_or(StatusCode::NOT_FOUND)
        }
        async fn direct(
            State(f): State<FakeMattermost>,
            h: HeaderMap,
            Json(ids): Json<Vec<String>>,
        ) -> Result<(StatusCode, Json<serde_json::Value>), StatusCode> {
            if !authed(&f, &h) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            if ids.len() != 2 || ids[0] != "botuser000000000000000000b" {
                return Err(StatusCode::BAD_REQUEST);
            }
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({"id": format!("dm-{}", ids[1]), "type": "D"})),
            ))
        }
        async fn posts(
            State(f): State<FakeMattermost>,
            h: HeaderMap,
            Json(p): Json<serde_json::Value>,
        ) -> Result<(StatusCode, Json<serde_json::Value>), StatusCode> {
            if !authed(&f, &h) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            if p["channel_id"].as_str().is_none() || p["message"].as_str().is_none() {
                return Err(StatusCode::BAD_REQUEST);
            }
            f.posts.lock().unwrap().push(p.clone());
            Ok((StatusCode::CREATED, Json(p)))
        }
        let app = axum::Router::new()
            .route("/api/v4/users/{id}", get(user))
            .route("/api/v4/channels/direct", post(direct))
            .route("/api/v4/posts", post(posts))
            .with_state(fake.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (fake, url)
    }
}

/// A fake GPU vendor for CDI: `shisa.test/gpu=0` and `=1` are character
/// devices (like /dev/null) that appear in a container given them, so the
/// whole GPU path is testable without a GPU (shared/docs/stack-notes.md).
pub fn fake_gpus() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        std::fs::create_dir_all("/etc/cdi").unwrap();
        let mut spec = String::from("cdiVersion: \"0.3.0\"\nkind: \"shisa.test/gpu\"\ndevices:\n");
        for i in 0..2 {
            let dev = format!("/dev/shisa-test-gpu{i}");
            if !Path::new(&dev).exists() {
                let st = Command::new("mknod").args(["-m", "666", &dev, "c", "1", "3"]).status().unwrap();
                assert!(st.success(), "mknod {dev}");
            }
            spec.push_str(&format!("  - name: \"{i}\"\n    containerEdits:\n      deviceNodes:\n        - path: {dev}\n"));
        }
        std::fs::write("/etc/cdi/shisa-test.yaml", spec).unwrap();
    });
}

/// Test images, built FROM scratch with the static busybox: `localhost/busybox`
/// (an admin image) and `localhost/alice/tools:1` (alice's own).
pub fn test_images() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let sock = podman();
        let dir = run_root().join("image");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy("/bin/busybox", dir.join("busybox")).expect("busybox-static");
        // A real image has /etc/passwd (Podman adds the user's entry to it).
        std::fs::write(dir.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(dir.join("group"), "root:x:0:\n").unwrap();
        std::fs::write(
            dir.join("Containerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/etc\", \"/root\"]\nRUN [\"/bin/chmod\", \"1777\", \"/tmp\"]\nCOPY passwd /etc/passwd\nCOPY group /etc/group\nCMD [\"/bin/sh\"]\n",
        )
        .unwrap();
        let out = podman_at(sock.parent().unwrap())
            .args(["build", "-q", "--network=none", "-t", "localhost/busybox:latest", "-t", "localhost/alice/tools:1", "-t", "localhost/bob/tools:1"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "podman build: {}", String::from_utf8_lossy(&out.stderr));
    });
}

/// A Podman API service of its own (for tests that stop blades): own storage,
/// own CONTAINERS_CONF with its own network config dir and default subnet.
pub struct PodmanService {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pid: u32,
}

impl PodmanService {
    pub fn start(name: &str) -> PodmanService {
        let dir = run_root().join(format!("podman-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        private_podman_conf(&dir);
        let socket = dir.join("podman.sock");
        let mut svc = PodmanService {
            dir,
            socket,
            pid: 0,
        };
        svc.revive();
        svc.build_test_image();
        svc
    }

    pub fn cli(&self) -> Command {
        podman_at(&self.dir)
    }

    fn build_test_image(&self) {
        test_images(); // the build context
        let ctx = run_root().join("image");
        let out = self
            .cli()
            .args([
                "build",
                "-q",
                "--network=none",
                "-t",
                "localhost/busybox:latest",
            ])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the API service (again, after `kill`: the blade comes back) on its storage.
    pub fn revive(&mut self) {
        self.pid = serve_podman(&self.dir, &self.socket);
    }

    /// Stop the API service (the blade goes down; its containers keep running).
    pub fn kill(&self) {
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A real sshd on loopback that lets one key forward Unix sockets and nothing else,
/// as a remote blade's would.
pub struct Sshd {
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
}

pub fn sshd() -> &'static Sshd {
    static S: OnceLock<Sshd> = OnceLock::new();
    S.get_or_init(|| {
        let dir = run_root().join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let keygen = |path: &Path| {
            let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().expect("ssh-keygen (openssh-client)");
            assert!(st.success());
        };
        keygen(&dir.join("host_key"));
        keygen(&dir.join("client_key"));
        let client_pub = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
        std::fs::write(dir.join("authorized_keys"), format!("restrict,port-forwarding,command=\"/bin/false\" {client_pub}")).unwrap();
        let port = free_port();
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let known = format!("[127.0.0.1]:{port} {} {}\n", parts.next().unwrap(), parts.next().unwrap());
        std::fs::write(dir.join("known_hosts"), known).unwrap();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nAllowStreamLocalForwarding local\nAllowTcpForwarding local\nX11Forwarding no\nPermitTTY no\nStrictModes no\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"]).arg(dir.join("sshd_config")).stdout(Stdio::null()).stderr(Stdio::null());
        spawn_daemon(cmd);
        wait_for("sshd", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Sshd { port, key: dir.join("client_key"), known_hosts: dir.join("known_hosts") }
    })
}

/// A real registry (Debian's docker-registry) whose token realm and
/// notifications point at a shisa that will listen on `shisa_port`.
pub struct RegistryProc {
    pub port: u16,
    pub toml: String,
}

pub const NOTIFY_TOKEN: &str = "Bearer test-notify-secret";

pub fn registry(shisa_port: u16) -> RegistryProc {
    let dir = tempfile::tempdir_in(run_root()).unwrap().keep();
    let (key, cert) = (dir.join("token-key.pem"), dir.join("token-cert.pem"));
    shisa::registry::jwt::ensure_keys(&key, &cert).unwrap();
    let port = free_port();
    let conf = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: http://127.0.0.1:{shisa_port}/registry/token\n    service: shisa-registry\n    issuer: shisa\n    rootcertbundle: {cert}\nnotifications:\n  endpoints:\n    - name: shisa\n      url: http://127.0.0.1:{shisa_port}/hooks/registry\n      headers:\n        Authorization: [\"{NOTIFY_TOKEN}\"]\n      timeout: 2s\n      threshold: 10\n      backoff: 1s\n",
        d = dir.display(),
        cert = cert.display()
    );
    std::fs::write(dir.join("config.yml"), conf).unwrap();
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_daemon(cmd);
    wait_for("docker-registry", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let toml = format!(
        "[registry]\nurl = \"http://127.0.0.1:{port}\"\nhost = \"127.0.0.1:{port}\"\nrealm = \"http://127.0.0.1:{shisa_port}/registry/token\"\nkey_file = {:?}\ncert_file = {:?}\nnotification_token = {:?}\nsync_seconds = 2\ninsecure = true\n",
        key.display().to_string(),
        cert.display().to_string(),
        NOTIFY_TOKEN
    );
    RegistryProc { port, toml }
}

/// A private Slurm cluster of one node (this machine), shared by the tests of
/// this run: its own munged (own key and socket), slurmctld and slurmd on free
/// ports with their own state, two fake GPUs (`gpu:tesla:2`, the same device
/// nodes as the fake CDI GPUs), MinJobAge of an hour. The demo users become
/// Unix accounts, as LDAP/NSS would make them on a real cluster.
pub struct Slurm {
    pub conf: PathBuf,
}

/// Tests that use the Slurm cluster take turns: they count its two GPUs.
pub async fn slurm_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = TURN.lock().await;
    // Whatever an earlier (perhaps failed) test left on the cluster goes first.
    let conf = slurm().conf.clone();
    let squeue = |conf: &Path| {
        let out = Command::new("squeue")
            .args(["-h", "-t", "PD,R,CG,CF", "-o", "%i"])
            .env("SLURM_CONF", conf)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for _ in 0..100 {
        let ids = squeue(&conf);
        if ids.is_empty() {
            break;
        }
        let _ = Command::new("scancel")
            .args(&ids)
            .env("SLURM_CONF", &conf)
            .status();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    guard
}

pub fn slurm() -> &'static Slurm {
    static S: OnceLock<Slurm> = OnceLock::new();
    S.get_or_init(|| {
        fake_gpus();
        shisa::cli::demo::create_unix_accounts(&demo_users(), run_root()).expect("useradd (run as root)");
        // Jobs run as the demo users: they must reach their homes under the run root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(run_root(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let dir = run_root().join("slurm");
        for d in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let key = dir.join("munge.key");
        std::fs::write(&key, (0..1024).map(|i| (i * 7919 % 251) as u8 ^ (std::process::id() as u8)).collect::<Vec<u8>>()).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sock = dir.join("munge.sock");
        let mut m = Command::new("munged");
        m.arg("-F").arg("-f")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--log-file={}", dir.join("munged.log").display()))
            .arg(format!("--pid-file={}", dir.join("munged.pid").display()))
            .arg(format!("--seed-file={}", dir.join("munged.seed").display()))
            .stdout(Stdio::null()).stderr(Stdio::null());
        spawn_daemon(m);
        wait_for("munged", || sock.exists());
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string();
        let (p1, p2) = (free_port(), free_port());
        let conf = dir.join("slurm.conf");
        std::fs::write(&conf, format!(
            "ClusterName=shisatest\nSlurmctldHost={host}\nSlurmctldPort={p1}\nSlurmdPort={p2}\nAuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\nSchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nGresTypes=gpu\nReturnToService=2\nMinJobAge=3600\nNodeName={host} CPUs=2 RealMemory=8000 Gres=gpu:tesla:2 State=UNKNOWN\nPartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\nPartitionName=staff Nodes={host} MaxTime=INFINITE State=UP\n",
            sock = sock.display(), d = dir.display()
        )).unwrap();
        std::fs::write(dir.join("gres.conf"), format!("NodeName={host} Name=gpu Type=tesla File=/dev/shisa-test-gpu[0-1]\n")).unwrap();
        for daemon in ["slurmctld", "slurmd"] {
            let mut c = Command::new(daemon);
            c.arg("-D").arg("-f").arg(&conf).env("SLURM_CONF", &conf).stdout(Stdio::null()).stderr(Stdio::null());
            spawn_daemon(c);
            std::thread::sleep(Duration::from_millis(500));
        }
        for _ in 0..3 {
            let idle = || {
                Command::new("sinfo").args(["-h", "-o", "%t"]).env("SLURM_CONF", &conf).output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle").unwrap_or(false)
            };
            let mut ok = false;
            for _ in 0..200 {
                if idle() { ok = true; break; }
                std::thread::sleep(Duration::from_millis(50));
            }
            if ok { return Slurm { conf }; }
        }
        panic!("slurm did not come up: see {}", dir.display());
    })
}
