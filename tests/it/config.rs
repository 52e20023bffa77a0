//! Configuration: the example works as it is; errors name the key.

use std::path::Path;

use shisa::config::Config;

use crate::harness::{config_text, repo, run_root, Opts};

#[test]
fn example_config_is_valid_as_it_is() {
    let cfg = Config::load(&repo().join("deploy/shisa.example.toml")).unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:8470");
    assert_eq!(
        cfg.blades[0].podman_socket,
        Path::new("/run/podman/podman.sock")
    );
    assert!(
        cfg.warnings.iter().any(|w| w.contains("username")),
        "check-config warns about username linking"
    );
    assert!(matches!(
        cfg.directory,
        shisa::config::Directory::Static { .. }
    ));
}

fn err_of(text: &str) -> String {
    let p = run_root().join("cfg-errors.toml");
    match Config::from_str(text, &p) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => format!("{}: {}", e.key, e.reason),
    }
}

fn base() -> String {
    config_text(&Opts::default(), &run_root().join("cfg-data"))
}

#[test]
fn errors_name_the_key_and_the_reason() {
    let b = base();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            b.replace("[server]\n", "[server]\nlisen = 1\n"),
            "server.lisen",
            "unknown field `lisen`, expected one of `listen`",
        ),
        (
            b.replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
            "server.listen",
            "not an address",
        ),
        (
            b.replace(
                "tokens = [\"test-container-token\", \"test-job-token\"]",
                "tokens = []",
            ),
            "mattermost.tokens",
            "at least one",
        ),
        (
            b.replace(
                "tokens = [\"test-container-token\", \"test-job-token\"]",
                "tokens = [\"a\", { env = \"SHISA_TEST_SURELY_UNSET\" }]",
            ),
            "mattermost.tokens[1]",
            "SHISA_TEST_SURELY_UNSET",
        ),
        (
            b.replace("linking = \"username\"", "linking = \"mattermost-ldap\""),
            "mattermost.linking",
            "mattermost.url",
        ),
        (
            b.replace("linking = \"username\"", "linking = \"trust-me\""),
            "mattermost.linking",
            "unknown variant",
        ),
        (
            b.replace("demo-users.toml", "missing-users.toml"),
            "directory.users_file",
            "cannot read",
        ),
        (
            b.replace("source = \"static\"", "source = \"ldap\""),
            "directory.ldap",
            "[directory.ldap]",
        ),
        (
            b.replace(
                &format!(
                    "podman_socket = {:?}",
                    run_root().join("no-podman.sock").display().to_string()
                ),
                "podman_socket = \"tcp://10.0.0.2:8080\"",
            ),
            "blades[0].podman_socket",
            "no authentication",
        ),
        (
            b.replace("memory = \"512M\"", "memory = \"lots\""),
            "templates.busybox.memory",
            "`lots`",
        ),
        (
            format!("{b}\n[limits.student]\nmax_memory = \"8 gigs\"\n"),
            "limits.student.max_memory",
            "`8 gigs` is not a size",
        ),
        (
            format!("{b}\n[limits.student]\ngpu_lifetime = \"soon\"\n"),
            "limits.student.gpu_lifetime",
            "`soon` is not a duration",
        ),
        (
            b.replace("cpus = 1\n", "cpus = \"one\"\n"),
            "templates.busybox.cpus",
            "invalid type",
        ),
        ("[server\n".to_string(), "(syntax)", "TOML parse error"),
        (
            format!("{b}[gitlab]\nurl = \"https://gitlab.example.edu\"\napi_token = \"t\"\nwebhook_tokens = [\"w\"]\nrunner_uid_base = 230000\n"),
            "gitlab.runner_uid_base",
            "do not overlap the builds' 200000..265536",
        ),
        (
            format!("{b}[gitlab]\nurl = \"https://gitlab.example.edu\"\napi_token = \"t\"\nwebhook_tokens = [\"w\"]\nrunner_uid_base = 0\n"),
            "gitlab.runner_uid_base",
            "do not start at 0",
        ),
        (
            format!("{b}[registry]\nurl = \"http://127.0.0.1:5000\"\nhost = \"127.0.0.1:5000\"\nrealm = \"http://shisa.example.edu/registry/token\"\nkey_file = \"k.pem\"\ncert_file = \"c.pem\"\nnotification_token = \"x\"\n"),
            "registry.realm",
            "plain HTTP",
        ),
    ];
    for (text, key, reason) in cases {
        let e = err_of(&text);
        assert!(
            e.starts_with(&format!("{key}: ")),
            "expected key {key}, got: {e}"
        );
        assert!(e.contains(reason), "expected {reason:?} in: {e}");
    }
}

#[test]
fn secrets_from_env_and_file() {
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    std::fs::write(dir.path().join("tok"), "from-file\n").unwrap();
    // SAFETY: set once, read by this test only.
    unsafe { std::env::set_var("SHISA_TEST_TOKEN_ENV", "from-env") };
    let text = base().replace(
        "tokens = [\"test-container-token\", \"test-job-token\"]",
        "tokens = [{ env = \"SHISA_TEST_TOKEN_ENV\" }, { file = \"tok\" }]",
    );
    // A secret file others can read is refused, as ssh refuses such a key.
    let e = Config::from_str(&text, &dir.path().join("c.toml")).unwrap_err();
    assert_eq!(e.key, "mattermost.tokens[1]");
    assert!(e.reason.contains("chmod 600"), "{}", e.reason);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("tok"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let cfg = Config::from_str(&text, &dir.path().join("c.toml")).unwrap();
    assert!(cfg.mattermost.tokens[0].matches("from-env"));
    assert!(
        cfg.mattermost.tokens[1].matches("from-file"),
        "trailing newline of a secret file is dropped"
    );
    assert!(
        !format!("{:?}", cfg.mattermost).contains("from-env"),
        "secrets never appear in Debug output"
    );
}

#[test]
fn check_config_command() {
    let bin = env!("CARGO_BIN_EXE_shisa");
    let ok = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(repo().join("deploy/shisa.example.toml"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stderr).contains("warning: mattermost.linking"));
    let p = run_root().join("bad.toml");
    std::fs::write(
        &p,
        base().replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("server.listen: `nowhere` is not an address")
    );
}

#[test]
fn migrations_on_a_fresh_and_an_existing_database() {
    use rusqlite::Connection;
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    // Fresh.
    let fresh = dir.path().join("fresh.db");
    shisa::store::Store::open(&fresh).unwrap();
    let c = Connection::open(&fresh).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 15);
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Existing at version 1, with data.
    let old = dir.path().join("old.db");
    {
        let mut c = Connection::open(&old).unwrap();
        shisa::store::migrations::migrations()
            .to_version(&mut c, 1)
            .unwrap();
        c.execute("INSERT INTO audit(at, actor, action, outcome) VALUES (1, 'alice', 'container.ps', 'ok')", []).unwrap();
    }
    let store = shisa::store::Store::open(&old).unwrap();
    let rows = store.audit_entries(Some("alice")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].action.as_str(), rows[0].role.as_str()),
        ("container.ps", "")
    );
    let c = Connection::open(&old).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 15);
    // Opening again is a no-op.
    shisa::store::Store::open(&old).unwrap();
}

#[tokio::test]
async fn queued_rows_from_before_typed_tasks_still_run() {
    use rusqlite::Connection;
    use shisa::work::tasks::{ContainerTask, Task};
    let dir = tempfile::tempdir_in(run_root()).unwrap();
    let old = dir.path().join("queued.db");
    {
        let mut c = Connection::open(&old).unwrap();
        shisa::store::migrations::migrations()
            .to_version(&mut c, 8)
            .unwrap();
        // Exactly as the handlers wrote a stop before tasks were typed.
        c.execute(
            "INSERT INTO queue(kind, payload, owner, request_id, state, max_attempts, run_after, created_at, updated_at)
             VALUES ('container.stop', '{\"container\":4,\"actor\":\"bob\",\"cmd\":null,\"staff\":true}', 'alice', 'r-old', 'queued', 3, 0, 0, 0)",
            [],
        )
        .unwrap();
    }
    let store = shisa::store::Store::open(&old).unwrap();
    let (row, _) = store
        .claim("quick", 2)
        .await
        .unwrap()
        .expect("the old row is still queued");
    assert_eq!(row.version, 1);
    let t = Task::decode(&row).unwrap();
    assert_eq!(
        t,
        Task::Stop(ContainerTask {
            container: 4,
            actor: "bob".into(),
            staff: true,
            ..Default::default()
        })
    );
}
