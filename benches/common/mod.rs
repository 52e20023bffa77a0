//! What the benchmarks share (each includes this next to `tests/it/harness.rs`).

use std::time::Duration;

/// The `p` quantile (0 to 1) of `v`, nearest rank.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Remove every container on the shared test Podman.
#[allow(dead_code)]
pub fn remove_all() {
    let out = crate::harness::podman_cli()
        .args(["rm", "-af", "-t", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
