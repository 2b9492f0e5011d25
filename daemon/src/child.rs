//! Child processes of airlockd.

/// The child dies with airlockd, even when airlockd is killed with SIGKILL
/// (`PR_SET_PDEATHSIG`; the thread that spawns it must outlive it, as
/// tokio's worker threads do).
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
