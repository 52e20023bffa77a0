//! The command line: `serve`, `check-config`, `chat`, `demo`, `sif`.

pub mod chat;
pub mod demo;
pub mod serve;
pub mod sif;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shisa",
    version,
    about = "Self-service containers, images and GPU jobs from chat and git"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service.
    Serve {
        #[arg(long, env = "SHISA_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration without starting anything.
    CheckConfig {
        #[arg(long, env = "SHISA_CONFIG")]
        config: PathBuf,
    },
    /// Send a slash command to a running shisa exactly as Mattermost would, and print the replies.
    Chat {
        #[arg(long, env = "SHISA_CONFIG")]
        config: PathBuf,
        /// The demo user to act as (their Mattermost id comes from the demo users file).
        #[arg(long = "as")]
        as_user: String,
        /// Print (and mark read) the user's direct messages instead of sending a command.
        #[arg(long)]
        inbox: bool,
        /// The demo users file (default: the configured users file, else deploy/demo-users.toml beside the config).
        #[arg(long)]
        users: Option<PathBuf>,
        /// Seconds to wait for the final reply.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command line, e.g. "/container help".
        text: Option<String>,
    },
    /// Create the registry token signing key and certificate (`registry.key_file`, `registry.cert_file`) if missing.
    RegistryKeys {
        #[arg(long, env = "SHISA_CONFIG")]
        config: PathBuf,
    },
    /// Convert images to Singularity (SIF) files and inspect SIF files.
    Sif {
        #[command(subcommand)]
        what: sif::SifCommand,
    },
    /// Generate the demo identities from the demo users file.
    Demo {
        #[command(subcommand)]
        what: demo::DemoCommand,
    },
}

pub fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Chat {
            config,
            as_user,
            inbox,
            users,
            timeout,
            text,
        } => chat::run(&config, &as_user, inbox, users, timeout, text),
        Command::Demo { what } => demo::run(what),
        Command::Sif { what } => sif::run(what),
        Command::RegistryKeys { config } => registry_keys(&config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shisa: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn registry_keys(path: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    let cfg = crate::config::Config::load(path)?;
    let Some(r) = &cfg.registry else {
        anyhow::bail!("{}: there is no [registry] table", path.display())
    };
    let made = crate::registry::jwt::ensure_keys(&r.key_file, &r.cert_file)?;
    println!(
        "{} {} and {}; give the certificate to the registry as auth.token.rootcertbundle",
        if made { "created" } else { "kept the existing" },
        r.key_file.display(),
        r.cert_file.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn check_config(path: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    match crate::config::Config::load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", path.display());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(std::process::ExitCode::from(2))
        }
    }
}
