//! airlock: build untrusted nixpkgs pull requests in throwaway VMs.
//!
//! Layers, lowest first (ARCHITECTURE.md's picture is generated from the
//! `use` edges and `daemon/tests/structure.rs` fails on a cycle):
//! - leaves and pure formats: [`store`] (the `airlock-nix-formats` crate:
//!   store paths, NAR, narinfo, signatures), [`ofborg`] (messages),
//!   [`config`], [`error`], [`job`] (the job record and its directory),
//!   [`systemd`] (sd_notify), [`term`], [`fsutil`], [`fault`];
//! - adapters, each owning its settings (`from_config`): [`vm`] (QEMU,
//!   cloud-hypervisor), [`checkout`] (git), [`input`] (the input disk),
//!   [`quarantine`] (verified outputs on disk), [`substituter`] (the fetch
//!   phase's cache), [`supervise`] (systemd units), [`journal`],
//!   [`control`] (cancel, job changes), [`review`] (reports), [`release`]
//!   (label watcher, signing, the binary cache server);
//! - the [`runner`], one job's story as named steps, and [`web`] (read-only
//!   pages over the job directories);
//! - the [`scheduler`] (queue, slots, drain, cancel, recovery);
//! - its front-ends, [`dbus`] (`airlockctl`) and [`amqp`] (the broker),
//!   which call the scheduler and are wired up by `airlockd`.

pub mod amqp;
pub mod attest;
pub mod checkout;
pub mod checks;
pub mod child;
pub mod config;
pub mod control;
pub mod dbus;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod hydra;
pub mod hydra_intake;
pub mod input;
pub mod job;
pub mod journal;
pub mod nixpkgs_ci;
pub mod ofborg;
pub mod quarantine;
pub mod release;
pub mod review;
pub mod runner;
pub mod scheduler;
pub mod substituter;
pub mod supervise;
pub mod systemd;
pub mod term;
pub mod vm;
pub mod web;

pub use airlock_nix_formats as store;

#[cfg(test)]
mod fuzzish;
#[cfg(test)]
mod testing;
