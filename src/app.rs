//! The assembled service: configuration, state and adapters, shared by the
//! HTTP edge and the workers.

use std::sync::Arc;

use crate::config::Config;
use crate::identity::directory::Directory;
use crate::mattermost::client::{Chat, MattermostClient};
use crate::mattermost::notify::Notifier;
use crate::metrics::Metrics;
use crate::podman::{Podman, PodmanClient};
use crate::store::Store;

pub struct App {
    pub cfg: Config,
    pub store: Store,
    pub directory: Arc<dyn Directory>,
    pub mattermost: Arc<dyn Chat>,
    pub notifier: Notifier,
    pub metrics: Metrics,
    pub blades: Vec<(crate::config::Blade, Arc<dyn Podman>)>,
    /// Who gets the GPUs.
    pub allocator: Arc<dyn crate::gpus::Allocator>,
    /// What containers use: CPU and GPU samples for idle reclaim.
    pub usage: Arc<dyn crate::usage::Usage>,
    /// The department registry, when configured.
    pub registry: Option<crate::registry::Registry>,
    /// The GitLab API client (admin token; `for_user` adds Sudo), when configured.
    pub gitlab: Option<Arc<dyn crate::gitlab::client::Gitlab>>,
    /// Slurm, when configured.
    pub scheduler: Option<Arc<dyn crate::slurm::Scheduler>>,
    /// Which blades answer.
    pub health: crate::blades::HealthBoard,
    /// Wakes idle workers when a task is queued: one bell per lane (`work::tasks::Lane`).
    pub wake: [tokio::sync::Notify; 3],
    /// This installation's id (`Store::instance_id`), on labels and cgroup names.
    pub instance: String,
    /// Seals values kept at rest in the database (containers' `--env` values).
    pub state_key: [u8; 32],
    /// Seconds added to the system clock for the lecture schedule (tests move it; 0 in service).
    pub clock_offset: Arc<std::sync::atomic::AtomicI64>,
}

impl App {
    /// Now, as the lecture schedule sees it (Unix seconds).
    pub fn now(&self) -> i64 {
        crate::store::now() + self.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Makes a blade's Podman client.
pub type PodmanMaker = Arc<dyn Fn(&crate::config::Blade) -> Arc<dyn Podman> + Send + Sync>;

/// The outside services, when a test brings its own: `None` is the real one the
/// configuration describes. `serve` passes `Services::default()`.
#[derive(Clone, Default)]
pub struct Services {
    /// Each blade's Podman.
    pub podman: Option<PodmanMaker>,
    pub directory: Option<Arc<dyn crate::identity::Directory>>,
    pub chat: Option<Arc<dyn Chat>>,
    pub gitlab: Option<Arc<dyn crate::gitlab::client::Gitlab>>,
    /// The registry's API (the token service and its keys stay real).
    pub registry_api: Option<Arc<dyn crate::registry::client::RegistryApi>>,
    pub scheduler: Option<Arc<dyn crate::slurm::Scheduler>>,
    /// An offset to the schedule's clock that a test can move.
    pub clock_offset: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// What containers use (for reclaiming idle ones).
    pub usage: Option<Arc<dyn crate::usage::Usage>>,
}

/// The data directory is shisa's alone (0700), except for passing through (0711, no
/// listing) when users' homes or the SIF store lie inside it, as in the demo setup: their jobs
/// must reach those paths, and every file of shisa's inside is 0600 or in a 0700 folder anyway.
fn private_data_dir(cfg: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let d = &cfg.data_dir;
    let inside = |p: &std::path::Path| p.starts_with(d);
    let sif_inside = cfg.sif.store_dir.as_deref().is_some_and(inside)
        || cfg.sif.cluster_path.as_deref().is_some_and(inside);
    let mode = if inside(&cfg.home_base) || sif_inside {
        0o711
    } else {
        0o700
    };
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", d.display()))
}

impl App {
    pub fn new(cfg: Config) -> anyhow::Result<Arc<App>> {
        Self::assemble(cfg, Services::default())
    }

    /// The application with the real services, or the ones `services` brings.
    pub fn assemble(cfg: Config, services: Services) -> anyhow::Result<Arc<App>> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {e}",
                cfg.data_dir.display()
            )
        })?;
        private_data_dir(&cfg)?;
        let store = Store::open(&cfg.db_path())?;
        let state_key = crate::sealing::key(&cfg.state_key_path())?;
        let instance = store.instance_id()?;
        let directory = match services.directory {
            Some(d) => d,
            None => {
                crate::identity::directory::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?
            }
        };
        let mattermost: Arc<dyn Chat> = match services.chat {
            Some(c) => c,
            None => Arc::new(MattermostClient::new(
                cfg.mattermost.url.clone(),
                cfg.mattermost.bot_token.clone(),
                cfg.mattermost.timeout_seconds,
            )),
        };
        let notifier = Notifier {
            client: mattermost.clone(),
            store: store.clone(),
        };
        let blades = cfg
            .blades
            .iter()
            .map(|b| {
                let c: Arc<dyn Podman> = match &services.podman {
                    Some(make) => make(b),
                    None => Arc::new(PodmanClient::new(&b.podman_socket)),
                };
                (b.clone(), c)
            })
            .collect();
        let registry = match &cfg.registry {
            Some(r) => {
                let mut reg = crate::registry::Registry::new(r)?;
                if let Some(api) = services.registry_api {
                    reg.api = api;
                }
                Some(reg)
            }
            None => None,
        };
        let gitlab = match (services.gitlab, &cfg.gitlab) {
            (Some(g), _) => Some(g),
            (None, Some(g)) => Some(Arc::new(crate::gitlab::client::GitlabApi::new(
                &g.url,
                g.api_token.clone(),
                std::time::Duration::from_secs(g.timeout_seconds),
            )?) as Arc<dyn crate::gitlab::client::Gitlab>),
            (None, None) => None,
        };
        let scheduler = match services.scheduler {
            Some(s) => cfg.slurm.as_ref().map(|_| s),
            None => cfg.slurm.as_ref().map(|sl| {
                Arc::new(crate::slurm::Cli {
                    conf: sl.conf.clone(),
                }) as Arc<dyn crate::slurm::Scheduler>
            }),
        };
        // Who owns the blades' GPUs: Slurm when the blades are its nodes, else our own ledger.
        let allocator: Arc<dyn crate::gpus::Allocator> = match (&cfg.slurm, &scheduler) {
            (Some(sl), Some(sched)) if sl.gpu_containers => {
                use crate::identity::Role;
                let lifetimes = [Role::Student, Role::Instructor, Role::Admin]
                    .into_iter()
                    .map(|r| {
                        let secs = cfg.limits_for(r).gpu_lifetime.secs;
                        (r.as_str().to_string(), secs.div_ceil(60).max(1))
                    })
                    .collect();
                Arc::new(crate::slurm::allocator::SlurmAllocator {
                    store: store.clone(),
                    slurm: sched.clone(),
                    directory: directory.clone(),
                    lifetimes,
                    partition: sl.partition.clone(),
                    instance: instance.clone(),
                })
            }
            _ => Arc::new(crate::gpus::LocalAllocator {
                store: store.clone(),
            }),
        };
        Ok(Arc::new(App {
            allocator,
            usage: services
                .usage
                .clone()
                .unwrap_or_else(|| Arc::new(crate::usage::BladeUsage)),
            store,
            directory,
            mattermost,
            notifier,
            metrics: Metrics::default(),
            blades,
            wake: Default::default(),
            health: Default::default(),
            registry,
            gitlab,
            scheduler,
            instance,
            state_key,
            clock_offset: services.clock_offset.clone().unwrap_or_default(),
            cfg,
        }))
    }

    /// What placement needs of the application.
    pub fn fleet(&self) -> crate::blades::Fleet<'_> {
        crate::blades::Fleet {
            blades: &self.blades,
            health: &self.health,
            store: &self.store,
            allocator: self.allocator.as_ref(),
            contact: &self.cfg.mattermost.contact,
        }
    }

    pub fn podman(&self, blade: &str) -> Option<&dyn Podman> {
        self.blades
            .iter()
            .find(|(b, _)| b.name == blade)
            .map(|(_, c)| c.as_ref())
    }
}
