//! Pure Nix store formats: store paths, Nix's base32, NAR validation, narinfo.
//! No I/O beyond `Read`/`Write`, no async.

pub mod ca;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod path;
pub mod signing;

#[cfg(test)]
mod fuzzish;

pub use path::StorePath;
