//! When a container is reclaimed, and why: pure, from its row, its owner's role limits and
//! the clock. `work::reclaim` samples usage, warns, and acts on what this decides.

use crate::config::{Limits, Reclaim};
use crate::store::containers::ContainerRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Stopped for `remove_stopped_after`: removed.
    Stale,
    /// Running for `max_lifetime`: stopped.
    Lifetime,
    /// No CPU (nor GPU) use for `idle_after`: stopped.
    Idle,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stale => "stale",
            Reason::Lifetime => "lifetime",
            Reason::Idle => "idle",
        }
    }

    /// Removed (its ports and address go) rather than stopped.
    pub fn removes(self) -> bool {
        self == Reason::Stale
    }
}

/// The next reclaim due for a container, and when (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub reason: Reason,
    pub at: i64,
}

impl Due {
    /// How this warning is remembered on the row, so it is sent once per deadline.
    pub fn mark(&self) -> String {
        format!("{}:{}", self.reason.as_str(), self.at)
    }
}

/// What happens next to this container, if anything: `/container extend` (`keep_until`)
/// postpones every reason. Only running and stopped containers are reclaimed.
pub fn due(row: &ContainerRow, limits: &Limits) -> Option<Due> {
    let keep = row.keep_until.unwrap_or(i64::MIN);
    let later = |t: i64| t.max(keep);
    match row.state.as_str() {
        "exited" => {
            let stopped = row.stopped_at?;
            Some(Due {
                reason: Reason::Stale,
                at: later(stopped + limits.remove_stopped_after.secs as i64),
            })
        }
        "running" => {
            let started = row.started_at?;
            let lifetime = Due {
                reason: Reason::Lifetime,
                at: later(started + limits.max_lifetime.secs as i64),
            };
            let idle = Due {
                reason: Reason::Idle,
                at: later(row.active_at.unwrap_or(started) + limits.idle_after.secs as i64),
            };
            Some(if idle.at < lifetime.at {
                idle
            } else {
                lifetime
            })
        }
        _ => None,
    }
}

/// What to do now about a container's next reclaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Tell the owner; if the warning comes after the deadline, `keep_until` moves so they
    /// still get the whole warning time.
    Warn {
        due: Due,
        keep_until: Option<i64>,
    },
    /// The warning was sent and its time is up.
    Act(Due),
}

pub fn step(row: &ContainerRow, limits: &Limits, cfg: &Reclaim, now: i64) -> Step {
    let Some(d) = due(row, limits) else {
        return Step::Nothing;
    };
    let notice = if d.reason.removes() {
        cfg.warn_before_remove.secs
    } else {
        cfg.warn_before_stop.secs
    } as i64;
    let warned = row.warned.as_deref() == Some(d.mark().as_str());
    if warned {
        return if now >= d.at {
            Step::Act(d)
        } else {
            Step::Nothing
        };
    }
    if now < d.at - notice {
        return Step::Nothing;
    }
    // Overdue already (shisa was down, or the setting changed): the whole notice from now.
    let full = now + notice;
    if d.at <= now {
        let moved = Due { at: full, ..d };
        Step::Warn {
            due: moved,
            keep_until: Some(full),
        }
    } else {
        Step::Warn {
            due: d,
            keep_until: None,
        }
    }
}

/// `/container extend NAME [TIME]`: the new `keep_until`, at most `max_extend` from now.
pub fn extend_until(now: i64, asked: Option<u64>, limits: &Limits) -> (i64, bool) {
    let cap = limits.max_extend.secs;
    let want = asked.unwrap_or(cap);
    (now + want.min(cap) as i64, want > cap)
}

/// Whether CPU use between two samples is below `idle_cpu_percent` of one CPU.
pub fn was_idle(before: u64, after: u64, elapsed_secs: i64, idle_cpu_percent: f64) -> bool {
    if elapsed_secs <= 0 {
        return false;
    }
    let used = after.saturating_sub(before) as f64;
    used < idle_cpu_percent / 100.0 * elapsed_secs as f64 * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str) -> ContainerRow {
        ContainerRow {
            id: 1,
            owner: "alice".into(),
            name: "c".into(),
            blade: "b".into(),
            podman_name: "alice_c".into(),
            podman_id: Some("x".into()),
            image: "i".into(),
            command: vec![],
            env: Default::default(),
            cpus_milli: 1000,
            memory: 1,
            gpus: 0,
            private: false,
            state: state.into(),
            exit_code: None,
            oom: false,
            created_at: 0,
            started_at: Some(0),
            expires_at: None,
            stopped_at: Some(0),
            active_at: Some(0),
            cpu_seen: None,
            sampled_at: None,
            keep_until: None,
            warned: None,
            wants_ip: false,
            waiting_since: None,
        }
    }

    const DAY: i64 = 86400;

    #[test]
    fn a_stopped_container_is_warned_a_day_ahead_then_removed() {
        let (l, c) = (Limits::default(), Reclaim::default());
        let mut r = row("exited");
        assert_eq!(step(&r, &l, &c, 5 * DAY), Step::Nothing);
        let s = step(&r, &l, &c, 6 * DAY + 1);
        let Step::Warn { due, keep_until } = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (due.reason, due.at, keep_until),
            (Reason::Stale, 7 * DAY, None)
        );
        r.warned = Some(due.mark());
        assert_eq!(step(&r, &l, &c, 7 * DAY - 1), Step::Nothing);
        assert_eq!(step(&r, &l, &c, 7 * DAY), Step::Act(due));
    }

    #[test]
    fn a_late_warning_still_gives_the_whole_notice() {
        let (l, c) = (Limits::default(), Reclaim::default());
        let r = row("exited");
        let Step::Warn { due, keep_until } = step(&r, &l, &c, 30 * DAY) else {
            panic!()
        };
        assert_eq!(keep_until, Some(31 * DAY));
        assert_eq!(due.at, 31 * DAY);
    }

    #[test]
    fn idle_comes_before_lifetime_and_extend_postpones_both() {
        let (l, c) = (Limits::default(), Reclaim::default());
        let mut r = row("running");
        assert_eq!(
            due(&r, &l),
            Some(Due {
                reason: Reason::Idle,
                at: DAY
            })
        );
        r.active_at = Some(14 * DAY);
        assert_eq!(due(&r, &l).unwrap().reason, Reason::Lifetime);
        let (until, capped) = extend_until(14 * DAY, Some(30 * DAY as u64), &l);
        assert!(capped, "asking past the role's cap is cut to it");
        r.keep_until = Some(until);
        assert_eq!(due(&r, &l).unwrap().at, 21 * DAY);
        assert_eq!(step(&r, &l, &c, 15 * DAY), Step::Nothing);
    }

    #[test]
    fn idle_is_below_the_share_of_one_cpu() {
        assert!(was_idle(0, 1_000_000, 60, 1.0), "1 ms in a minute");
        assert!(!was_idle(0, 1_000_000_000, 60, 1.0), "1 s in a minute");
        assert!(!was_idle(0, 0, 0, 1.0), "no time passed: no verdict");
    }
}
