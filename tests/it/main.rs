//! The one integration-test binary: real Podman, slapd (and later registry,
//! Slurm) started once per run by `harness`, fakes only for what cannot run here.

mod blades;
mod config;
mod containers;
mod courses;
mod crash;
mod fakes;
mod gitlab;
mod harness;
mod identity;
mod jobs;
mod queue;
mod reclaim;
mod reference;
mod registry;
mod sif;
mod slash;
