//! `shisa demo ...`: everything demo identities need, generated from the one
//! demo users file, so the static directory, the test LDAP directory, the Unix
//! accounts (for Slurm) and the home directories always agree.

use std::path::PathBuf;
use std::process::Command;

use clap::Subcommand;

use crate::config::Config;
use crate::identity::users_file::UsersFile;

#[derive(Subcommand)]
pub enum DemoCommand {
    /// Print an LDIF with the demo users and groups (homes under the data directory).
    Ldif {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        users: Option<PathBuf>,
        #[arg(long, default_value = "dc=example,dc=edu")]
        base_dn: String,
    },
    /// Create the demo users as Unix accounts on this machine (idempotent; needs root).
    UnixAccounts {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        users: Option<PathBuf>,
    },
}

fn load(config: &std::path::Path, users: Option<PathBuf>) -> anyhow::Result<(Config, UsersFile)> {
    let cfg = Config::load(config)?;
    let f = UsersFile::load(&super::chat::users_file_for(&cfg, users))
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok((cfg, f))
}

pub fn run(what: DemoCommand) -> anyhow::Result<std::process::ExitCode> {
    match what {
        DemoCommand::Ldif {
            config,
            users,
            base_dn,
        } => {
            let (cfg, f) = load(&config, users)?;
            print!("{}", f.to_ldif(&base_dn, &cfg.data_dir));
        }
        DemoCommand::UnixAccounts { config, users } => {
            let (cfg, f) = load(&config, users)?;
            create_unix_accounts(&f, &cfg.data_dir)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn exists(db: &str, key: &str) -> bool {
    Command::new("getent")
        .args([db, key])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn must(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// groupadd/useradd with argument vectors (no shell), skipping what exists.
pub fn create_unix_accounts(f: &UsersFile, data_dir: &std::path::Path) -> anyhow::Result<()> {
    for u in &f.users {
        let gid = u.gid_number.to_string();
        if !exists("group", &gid) {
            must(Command::new("groupadd").args(["-g", &gid, &u.uid]))?;
        }
        if !exists("passwd", &u.uid) {
            let home = f.home_of(u, data_dir);
            must(Command::new("useradd").args([
                "-u",
                &u.uid_number.to_string(),
                "-g",
                &gid,
                "-d",
                &home.to_string_lossy(),
                "-M",
                "-s",
                "/bin/sh",
                "-c",
                &u.name,
                &u.uid,
            ]))?;
        }
    }
    for g in &f.groups {
        if !exists("group", &g.name) {
            must(Command::new("groupadd").args(["-g", &g.gid_number.to_string(), &g.name]))?;
        }
        for m in &g.members {
            must(Command::new("usermod").args(["-a", "-G", &g.name, m]))?;
        }
    }
    Ok(())
}
