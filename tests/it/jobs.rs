//! `/job` against a real Slurm (slurmctld, slurmd, munge started by the
//! harness), with the jobs running the converted SIF through the test
//! launcher `tests/sif-exec.sh` (Apptainer is not packaged here).

use std::time::Duration;

use crate::harness::{slurm, slurm_turn, test_images, Opts, Stack};

fn job_id(reply: &str) -> String {
    reply
        .split("Job ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {reply}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_from_chat_run_as_their_owner_with_their_gpu() {
    test_images();
    let _turn = slurm_turn().await;
    let sl = slurm();
    // A variable of shisa's own process: it must never reach a job.
    std::env::set_var("SHISA_TEST_SECRET", "must-not-leak");
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sif-exec.sh");
    let s = Stack::start(Opts {
        podman: true,
        extra: format!(
            "[slurm]\nconf = {:?}\nlauncher = [{:?}]\npoll_seconds = 1\ngpu_types = [\"tesla\"]\n",
            sl.conf.display().to_string(),
            launcher.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    // Slurm down (a controller nobody answers at): a clear reply, nothing queued.
    let down_conf = sl.conf.with_file_name("down.conf");
    let conf_text = std::fs::read_to_string(&sl.conf).unwrap();
    let port_line = conf_text
        .lines()
        .find(|l| l.starts_with("SlurmctldPort="))
        .unwrap();
    std::fs::write(
        &down_conf,
        conf_text.replace(
            port_line,
            &format!("SlurmctldPort={}", crate::harness::free_port()),
        ),
    )
    .unwrap();
    let down = Stack::start(Opts {
        extra: format!(
            "[slurm]\nconf = {:?}\nlauncher = [{:?}]\n",
            down_conf.display().to_string(),
            launcher.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    let t = down
        .say("alice", "/job submit --image busybox -- true")
        .await;
    assert!(
        t.contains("Slurm is not answering") && t.contains("nothing was changed"),
        "{t}"
    );
    assert_eq!(down.store().queue_depth().await.unwrap(), (0, 0));
    down.stop().await;
    // Bad input: a clear answer, nothing submitted.
    let t = s
        .say("alice", "/job submit --image tools:1 --gpus 5 -- true")
        .await;
    assert!(t.contains("more than your limit"), "{t}");
    let t = s
        .say("alice", "/job submit --image tools:1 --gpus a100:1 -- true")
        .await;
    assert!(t.contains("no `a100` GPUs"), "{t}");
    let t = s
        .say(
            "alice",
            "/job submit --image tools:1 --script ../../etc/shadow",
        )
        .await;
    assert!(t.contains("inside your home"), "{t}");
    let t = s.say("alice", "/job submit --image nosuch:1 -- true").await;
    assert!(
        t.contains("no image") || t.contains("There is no image"),
        "{t}"
    );
    // A template gives defaults and bounds: asking for more is lowered, with a note.
    let t = s
        .say(
            "alice",
            "/job submit --template busybox --memory 2G --dry-run -- true",
        )
        .await;
    assert!(
        t.contains("--mem=512M") && t.contains("memory lowered"),
        "{t}"
    );
    assert!(t.contains("nothing was submitted"), "{t}");
    assert!(s.store().open_jobs().await.unwrap().is_empty());
    // The controller's own refusal comes back in its words (more memory than the node has).
    let r = s
        .chat("alice", "/job submit --image tools:1 --memory 12G -- true")
        .await;
    let last = &r.last().unwrap().text;
    assert!(last.contains("Slurm refused"), "{r:?}");
    assert!(s.store().open_jobs().await.unwrap().is_empty());
    // A GPU job from chat.
    let r = s
        .chat(
            "alice",
            "/job submit --image tools:1 --gpus tesla:1 --name gpujob -- /bin/sh -c 'echo uid=$(id -u); echo gpu=$CUDA_VISIBLE_DEVICES; env; echo the-end; exit 3'",
        )
        .await;
    let last = &r.last().unwrap().text;
    assert!(last.contains("is submitted"), "{r:?}");
    let id = job_id(last);
    let ended = s
        .dm_containing("alice", &format!("Job {id} (`gpujob`) ended"))
        .await;
    assert!(
        ended.contains("FAILED") && ended.contains("exit code 3"),
        "{ended}"
    );
    assert!(ended.contains("the-end"), "the log's last lines: {ended}");
    let log = s.say("alice", &format!("/job logs {id} --tail 500")).await;
    assert!(log.contains("uid=20001"), "runs as alice: {log}");
    assert!(
        log.contains("gpu=0") || log.contains("gpu=1"),
        "its GPU: {log}"
    );
    assert!(
        !log.contains("SHISA_") && !log.contains("must-not-leak"),
        "no shisa variable: {log}"
    );
    // bob cannot see, read or cancel alice's job.
    assert!(s
        .say("bob", &format!("/job logs {id}"))
        .await
        .contains("no job"));
    assert!(s
        .say("bob", &format!("/job cancel {id}"))
        .await
        .contains("no job"));
    assert!(!s.say("bob", "/job ps --all").await.contains("gpujob"));
    assert!(s.say("alice", "/job ps --all").await.contains("gpujob"));
    // Cancelling one's own running job.
    let r = s
        .chat(
            "alice",
            "/job submit --image tools:1 --name sleeper --time 5m -- sleep 300",
        )
        .await;
    let id2 = job_id(&r.last().unwrap().text);
    for _ in 0..100 {
        if s.say("alice", "/job ps").await.contains("RUNNING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s
        .say("alice", &format!("/job cancel {id2}"))
        .await
        .contains("is cancelled"));
    let ended = s
        .dm_containing("alice", &format!("Job {id2} (`sleeper`) ended"))
        .await;
    assert!(ended.contains("CANCELLED"), "{ended}");
    assert!(
        s.store().open_jobs().await.unwrap().is_empty(),
        "both jobs ended and released their SIF"
    );
    // Tracked jobs survive a restart: the end of a job that finishes while shisa is down
    // still reaches its owner.
    let r = s
        .chat(
            "alice",
            "/job submit --image tools:1 --name across -- /bin/sh -c 'sleep 3; echo made-it'",
        )
        .await;
    let id3 = job_id(&r.last().unwrap().text);
    let data_dir = s.data_dir.clone();
    s.stop_for_restart().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = Stack::start_with(&data_dir.with_extension("toml"), data_dir).await;
    let ended = s
        .dm_containing("alice", &format!("Job {id3} (`across`) ended"))
        .await;
    assert!(
        ended.contains("COMPLETED") && ended.contains("exit code 0") && ended.contains("made-it"),
        "{ended}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_containers_get_the_gpu_slurm_chose_and_jobs_wait_for_it() {
    test_images();
    let _turn = slurm_turn().await;
    let sl = slurm();
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sif-exec.sh");
    let host = String::from_utf8(
        std::process::Command::new("hostname")
            .arg("-s")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let s = Stack::start(Opts {
        podman: true,
        gpus: vec!["0".into(), "1".into()],
        extra: format!(
            "slurm_node = {host:?}\n[slurm]\nconf = {:?}\nlauncher = [{:?}]\npoll_seconds = 1\ngpu_containers = true\n",
            sl.conf.display().to_string(),
            launcher.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    // carol's job takes a GPU first: Slurm gives it index 0.
    let r = s
        .chat("carol", "/job submit --image localhost/busybox:latest --gpus tesla:1 --name holder --time 5m -- sleep 300")
        .await;
    let carol_job = job_id(&r.last().unwrap().text);
    for _ in 0..100 {
        if s.say("carol", "/job ps").await.contains("RUNNING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // alice's GPU container: Slurm places it on the other GPU, and the container gets that one.
    let t = s
        .say(
            "alice",
            "/container run --name sg --gpu localhost/busybox -- sleep 600",
        )
        .await;
    assert!(
        t.contains("GPU shisa.test/gpu=1)"),
        "the index Slurm chose: {t}"
    );
    let t = s.say("alice", "/container exec sg -- ls /dev").await;
    assert!(
        t.contains("shisa-test-gpu1") && !t.contains("shisa-test-gpu0"),
        "{t}"
    );
    // Both GPUs are Slurm's now: bob's GPU job waits while the container holds its GPU.
    let r = s
        .chat(
            "bob",
            "/job submit --image localhost/busybox:latest --gpus tesla:1 --name waits -- echo ran",
        )
        .await;
    let bob_job = job_id(&r.last().unwrap().text);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ps = s.say("bob", "/job ps").await;
    assert!(ps.contains("PENDING"), "{ps}");
    // Removing the container ends its allocation; bob's job then runs.
    assert!(s
        .say("alice", "/container rm --force sg")
        .await
        .contains("removed"));
    let ended = s
        .dm_containing("bob", &format!("Job {bob_job} (`waits`) ended"))
        .await;
    assert!(
        ended.contains("COMPLETED") && ended.contains("ran"),
        "{ended}"
    );
    assert!(s
        .say("carol", &format!("/job cancel {carol_job}"))
        .await
        .contains("is cancelled"));
    s.dm_containing("carol", &format!("Job {carol_job} (`holder`) ended"))
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_submissions_are_bounded_per_role() {
    test_images();
    let _turn = slurm_turn().await;
    let sl = slurm();
    let launcher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sif-exec.sh");
    let s = Stack::start(Opts {
        podman: true,
        extra: format!(
            "[slurm]\nconf = {:?}\nlauncher = [{:?}]\npoll_seconds = 1\n[limits.student]\njob_partitions = [\"gone\"]\nmax_job_time = \"2h\"\nmax_jobs = 2\n[limits.admin]\njob_partitions = [\"*\"]\n",
            sl.conf.display().to_string(),
            launcher.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.data_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    // A partition Slurm has but students may not use: refused by shisa, nothing queued.
    let t = s
        .say(
            "alice",
            "/job submit --image tools:1 --partition staff -- true",
        )
        .await;
    assert!(
        t.contains("may not submit to partition `staff`") && t.contains("gone"),
        "{t}"
    );
    assert_eq!(s.store().queue_depth().await.unwrap(), (0, 0));
    // An admin may name any partition.
    let t = s
        .say(
            "admin",
            "/job submit --image localhost/busybox:latest --partition staff --dry-run -- true",
        )
        .await;
    assert!(t.contains("--partition=staff"), "{t}");
    // Longer than the role allows.
    let t = s
        .say("alice", "/job submit --image tools:1 --time 3h -- true")
        .await;
    assert!(t.contains("3h of time") && t.contains("limit of 2h"), "{t}");
    // At most two open jobs: the third is refused, until one ends.
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = s
            .chat(
                "alice",
                &format!("/job submit --image tools:1 --name held{i} --time 5m -- sleep 300"),
            )
            .await;
        let last = &r.last().unwrap().text;
        assert!(last.contains("is submitted"), "{r:?}");
        ids.push(job_id(last));
    }
    let t = s.say("alice", "/job submit --image tools:1 -- true").await;
    assert!(t.contains("already have 2 jobs"), "{t}");
    // Another student is not held by alice's cap.
    let t = s
        .say(
            "bob",
            "/job submit --image localhost/busybox:latest --dry-run -- true",
        )
        .await;
    assert!(t.contains("nothing was submitted"), "{t}");
    for id in &ids {
        assert!(s
            .say("alice", &format!("/job cancel {id}"))
            .await
            .contains("is cancelled"));
    }
    let mut freed = false;
    for _ in 0..100 {
        if s.store()
            .jobs_of("alice", false)
            .await
            .unwrap()
            .iter()
            .all(|j| j.done)
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(freed, "the cancelled jobs ended");
    let r = s
        .chat("alice", "/job submit --image tools:1 --name after -- true")
        .await;
    let last = &r.last().unwrap().text;
    assert!(last.contains("is submitted"), "{r:?}");
    s.dm_containing("alice", &format!("Job {} (`after`) ended", job_id(last)))
        .await;
    s.stop().await;
}
