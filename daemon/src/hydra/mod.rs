//! Hydra's queue-runner as an intake (issue 31, docs/hydra.md): the
//! message types ([`proto`]), the stream framing ([`frame`]), the RPCs
//! ([`client`]) and being a joined builder ([`session`]).

pub mod client;
pub mod frame;
pub mod proto;
pub mod session;
pub mod step;
