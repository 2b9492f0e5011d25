//! Pure Nix store formats: store paths, Nix's base32, NAR validation,
//! narinfo, content addresses, binary-cache signatures and the outputs of
//! a derivation file.
//!
//! No I/O beyond `Read`/`Write`, no async. Shared by airlockd (quarantine,
//! the release cache, the substituter proxy) and the guest agent.

pub mod ca;
pub mod drv;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod path;
pub mod serve;
pub mod signing;
#[doc(hidden)]
pub mod testkit;

#[cfg(test)]
mod fuzzish;

pub use path::StorePath;
