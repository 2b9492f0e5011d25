//! Hydra's queue-runner as an intake (issue 31, docs/hydra.md): the
//! message types ([`proto`]), the stream framing ([`frame`]).

pub mod frame;
pub mod proto;
