//! What the benchmarks share (each includes this next to `tests/it/harness.rs`).

use std::time::Duration;

/// The `p` quantile (0 to 1) of `v`, nearest rank.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Remove every container on the shared test Podman, and the networks they were on (a
/// burst of students leaves one owner network each; left, their bridges and firewall rules
/// slow every later start on the machine).
#[allow(dead_code)]
pub fn remove_all() {
    for args in [
        &["rm", "-af", "-t", "0"][..],
        &["network", "prune", "-f"][..],
    ] {
        let out = crate::harness::podman_cli().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
