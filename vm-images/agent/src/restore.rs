//! The agent of a guest template (`--template PORT`).
//!
//! init started this agent in the template VM, before the host saved it:
//! the guest root is mounted, the disk driver holds only the root disk,
//! and nothing of any job has been read. Every VM restored from that saved
//! state resumes here, in [`await_job`], which reads the VM's go record
//! from the control port and only then makes the VM the job's: the
//! kernel's RNG reseeded with the host's seed (before anything else), the
//! clock set, the job's disks bound and mounted. A cold boot never comes
//! here (init mounts the disks and starts the agent from the input disk).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_wire::{disk, GoRecord, HELD_FILE};
use nix::mount::{mount, MsFlags};

const VIRTIO_BLK: &str = "/sys/bus/virtio/drivers/virtio_blk";
/// How long the job's disks may take to appear once bound.
const DISK_LIMIT: Duration = Duration::from_secs(10);

/// What a restored VM's agent learned from its go record and its disks.
pub struct Restored {
    /// The raw export disk.
    pub export: PathBuf,
}

/// Say ready on `ctl`, wait for the go record, and make this VM the job's.
pub fn await_job(ctl: &Path) -> Result<Restored, String> {
    let go = wait_for_go(ctl)?;
    // First: until this is done, the kernel's RNG is the template's.
    crate::add_entropy_and_reseed(&go.seed)?;
    let t0 = Instant::now();
    set_clock(go.unix_secs)?;
    std::fs::write(airlock_wire::BOOT_WORDS_FILE, &go.words)
        .map_err(|e| format!("{}: {e}", airlock_wire::BOOT_WORDS_FILE))?;
    // As init.sh reads it on a cold boot.
    let base = go.words.split_whitespace().any(|w| w == "airlock.base=1");
    let mut want = vec![disk::NIX, disk::INPUT, disk::EXPORT];
    if base {
        want.push(disk::BASE);
    }
    let held = std::fs::read_to_string(HELD_FILE).map_err(|e| format!("{HELD_FILE}: {e}"))?;
    // Only the disks this job uses (a probe costs tens of ms under TCG),
    // one after the other: binding them from threads at once was slower
    // on the one vCPU (BENCHMARKS.md).
    for (dev, _) in held
        .split_whitespace()
        .filter_map(|w| w.split_once(':'))
        .filter(|(_, serial)| want.contains(serial))
    {
        std::fs::write(format!("{VIRTIO_BLK}/bind"), dev)
            .map_err(|e| format!("cannot bind the disk {dev}: {e}"))?;
    }
    let devs = wait_for_disks(&want)?;
    let bound = t0.elapsed();
    let dev = |serial: &str| {
        devs.iter()
            .find(|(s, _)| s == serial)
            .map(|(_, d)| d.clone())
            .expect("waited for")
    };
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let ro = nosuid | MsFlags::MS_RDONLY;
    let mut mounts = vec![
        // noinit_itable: the disk is a sparse file, its inode tables read
        // as zeros already; zeroing them would cost the job's one vCPU.
        (dev(disk::NIX), "/nix", nosuid, Some("noinit_itable")),
        (dev(disk::INPUT), "/run/input", ro, Some("noload")),
    ];
    if base {
        mounts.push((dev(disk::BASE), "/run/base", ro, Some("noload")));
    }
    for (d, at, flags, data) in &mounts {
        std::fs::create_dir_all(at).map_err(|e| format!("mkdir {at}: {e}"))?;
        mount_ext4(d, at, *flags, *data)?;
    }
    // On the console: where a restored VM's first moments went.
    eprintln!(
        "airlock-agent: restored: disks bound in {} ms, mounted in {} ms",
        bound.as_millis(),
        (t0.elapsed() - bound).as_millis()
    );
    Ok(Restored {
        export: dev(disk::EXPORT),
    })
}

fn wait_for_go(ctl: &Path) -> Result<GoRecord, String> {
    // The template's CRNG is reseeded just before the save, so that a
    // restored VM's kernel is not due for a reseed of its own (early in
    // a boot it reseeds every few seconds) and the two reseeds that make it
    // differ from its siblings are the VM generation ID's and the agent's:
    // the isolation test's negative control depends on it.
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    crate::reseed_crng(&urandom)?;
    let mut port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctl)
        .map_err(|e| format!("{}: {e}", ctl.display()))?;
    // On cloud-hypervisor the port is the virtio console, a terminal: the
    // go record must not be echoed back (into the channel log).
    quiet(&port)?;
    writeln!(port, "{}", airlock_wire::TEMPLATE_READY)
        .map_err(|e| format!("{}: {e}", ctl.display()))?;
    let mut line = String::new();
    BufReader::new(&port)
        .read_line(&mut line)
        .map_err(|e| format!("no go record: {e}"))?;
    // Open for the agent's life: the console driver resets a terminal's
    // modes (echo back on) when its last descriptor closes.
    std::mem::forget(port);
    GoRecord::parse(&line).ok_or_else(|| "not a go record".to_owned())
}

/// No echo on `port` if it is a terminal (a virtio port is not).
fn quiet(port: &std::fs::File) -> Result<(), String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let Ok(mut t) = tcgetattr(port) else {
        return Ok(());
    };
    t.local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ECHONL | LocalFlags::ECHOE | LocalFlags::ECHOK);
    tcsetattr(port, SetArg::TCSANOW, &t)
        .map_err(|e| format!("cannot turn the console's echo off: {e}"))
}

#[allow(unsafe_code)]
fn set_clock(unix_secs: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: unix_secs as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: clock_settime reads one timespec, which lives for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "cannot set the clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The block devices with these serials, once all have appeared.
fn wait_for_disks(serials: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let t0 = Instant::now();
    loop {
        let found = block_serials();
        let all: Option<Vec<(String, PathBuf)>> = serials
            .iter()
            .map(|s| {
                found
                    .iter()
                    .find(|(f, _)| f == s)
                    .map(|(f, d)| (f.clone(), d.clone()))
            })
            .collect();
        if let Some(all) = all {
            return Ok(all);
        }
        if t0.elapsed() > DISK_LIMIT {
            let seen: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
            return Err(format!(
                "the job's disks {serials:?} did not appear within {}s (seen: {seen:?})",
                DISK_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every virtio disk's serial and device node.
fn block_serials() -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let serial = std::fs::read_to_string(e.path().join("serial")).ok()?;
            Some((serial.trim().to_owned(), PathBuf::from("/dev").join(name)))
        })
        .collect()
}

fn mount_ext4(dev: &Path, at: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    mount(Some(dev), at, Some("ext4"), flags, data)
        .map_err(|e| format!("cannot mount {} on {at}: {e}", dev.display()))
}
