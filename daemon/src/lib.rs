//! airlock: build untrusted nixpkgs pull requests in throwaway VMs.
//!
//! Layers (see ARCHITECTURE.md):
//! - pure formats and policy: [`store`] (the `airlock-nix-formats` crate:
//!   store paths, NAR, narinfo, signatures),
//!   [`ofborg`] (messages), [`config`], [`job`] (the job record);
//! - adapters behind narrow traits: [`vm`] (QEMU), [`checkout`] (git),
//!   [`quarantine`] (verified outputs on disk), [`release`] (GitHub label
//!   watcher, signing, the binary cache server);
//! - the [`runner`] that composes them, and the [`daemon`] (queue, scheduler,
//!   API) that `airlockd` and `airlockctl` wire up.

pub mod amqp;
pub mod checkout;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dbus;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod input;
pub mod job;
pub mod journal;
pub mod ofborg;
pub mod quarantine;
pub mod release;
pub mod review;
pub mod runner;
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
